"""The public import path of ``DynoClient`` (``from dyno_stream.client import DynoClient``);
the client lives in ``dyno_stream.kafka.client``."""

from dyno_stream.kafka.client import Delivery, DynoClient

__all__ = ["Delivery", "DynoClient"]
