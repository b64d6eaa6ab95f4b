"""``python -m dyno_stream`` is the ``dyno-stream`` command."""

from dyno_stream.cli import main

main()
