"""Erasure on request: ``dyno-stream erase ITEM [--wait]``.

An ``erase`` command goes through the ops topic, keyed by the item, so the worker that owns
the item applies it in order with the item's other ops: it removes every row and the cached
state of the item at once (not waiting for the lateness window), keeps only the deleted
marker (no attribute value), publishes the tombstone and logs the erasure without the item's
values. The worker confirms as it confirms a flatten command: its answer to the command is
the item's tombstone, whose source offset is the command's or later (or, for a command it
refuses, a dead letter naming the command's offset). Waiting reads those answers
(``compaction.await_answers``), never the group's committed offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from dyno_stream.config import Settings
from dyno_stream.jobs.compaction import Command, answer_ends, await_answers
from dyno_stream.kafka.client import Delivery, DynoClient
from dyno_stream.store.compaction_policy import Candidate


@dataclass(frozen=True)
class Erasure:
    """An erase command sent: where it landed, and whether the worker confirmed it."""

    delivery: Delivery
    confirmed: bool
    refused: str | None = None


def erase(settings: Settings, name: str, *, wait: bool, timeout: float) -> Erasure:
    """Send the erase command for ``name``; with ``wait``, wait up to ``timeout`` seconds for
    the owning worker's tombstone (its confirmation) or refusal."""
    since = answer_ends(settings) if wait else {}
    with DynoClient(settings) as client:
        delivered = client.erase(name).result(settings.worker.publish_timeout_s + 5)
    if not wait:
        return Erasure(delivered, confirmed=False)
    command = Command(Candidate(name, "", 0, 0), delivered.partition, delivered.offset)
    await_answers(settings, {name: command}, since, timeout)
    return Erasure(delivered, confirmed=command.answer is not None, refused=command.refused)
