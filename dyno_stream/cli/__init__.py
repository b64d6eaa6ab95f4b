"""The ``dyno-stream`` command (typer) and the seed demo: the top layer, the only one that
may start the local broker from ``devtools``.
"""

from dyno_stream.cli import doctor as _doctor  # noqa: F401  (registers `doctor` on app)
from dyno_stream.cli.app import app, main

__all__ = ["app", "main"]
