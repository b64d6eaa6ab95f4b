"""What an application uses to talk to dyno-stream: produce ops, read items from the workers
that own them, and follow the snapshot topic in a local view.

``from dyno_stream.client import DynoClient`` is the public path; the parts live in
``producer`` (sends), ``reads`` (routed reads), ``views`` (materialized views) and ``http``
(the one GET every caller of a worker's endpoint uses).
"""

from dyno_stream.client.producer import DynoClient, Outcome, Receipt
from dyno_stream.client.views import MaterializedView

__all__ = ["DynoClient", "MaterializedView", "Outcome", "Receipt"]
