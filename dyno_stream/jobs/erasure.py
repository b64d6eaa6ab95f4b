"""Erasure on request: ``dyno-stream erase ITEM [--wait]``.

An ``erase`` command goes through the ops topic, keyed by the item, so the worker that owns
the item applies it in order with the item's other ops: it removes every row and the cached
state of the item at once (not waiting for the lateness window), keeps only the deleted
marker (no attribute value), publishes the tombstone and logs the erasure without the item's
values. The worker answers the command as it answers a flatten command: with the item's
tombstone, whose source offset is the command's or later (or, for a command it refuses, a
dead letter naming the command's offset). Waiting reads those answers
(``compaction.await_answers``), never the group's committed offsets.

The answer proves the erasure only with what it says the store removed: its
``dyno.erased.rows`` header is the count of the item's rows the partition's store deleted.
0 means that store held nothing of the item (never written, already erased, or written to
another partition than the one its name hashes to): the erasure removed nothing, and the
command line says "no such item" rather than confirming.
"""

from __future__ import annotations

from dataclasses import dataclass

from dyno_stream.config import Settings
from dyno_stream.jobs.compaction import Command, answer_ends, await_answers
from dyno_stream.kafka.client import Delivery, DynoClient
from dyno_stream.store.compaction_policy import Candidate


@dataclass(frozen=True)
class Erasure:
    """An erase command sent: where it landed, and what the worker answered.

    ``answered``: the worker applied it; ``rows``: the rows its store removed (None when the
    answer did not say, as from a worker that does not count them); ``refused``: the reason
    of its dead letter instead."""

    delivery: Delivery
    answered: bool
    rows: int | None = None
    refused: str | None = None

    @property
    def confirmed(self) -> bool:
        """The store that held the item's rows has removed them."""
        return self.answered and self.rows is not None and self.rows > 0

    @property
    def nothing_held(self) -> bool:
        """The worker applied the erasure, and its store held no row of the item."""
        return self.answered and self.rows == 0


def erase(settings: Settings, name: str, *, wait: bool, timeout: float) -> Erasure:
    """Send the erase command for ``name``; with ``wait``, wait up to ``timeout`` seconds for
    the owning worker's answer (its tombstone, saying the rows removed) or refusal."""
    since = answer_ends(settings) if wait else {}
    with DynoClient(settings) as client:
        delivered = client.erase(name).result(settings.worker.publish_timeout_s + 5)
    if not wait:
        return Erasure(delivered, answered=False)
    command = Command(Candidate(name, "", 0, 0), delivered.partition, delivered.offset)
    await_answers(settings, {name: command}, since, timeout)
    return Erasure(
        delivered,
        answered=command.answer is not None,
        rows=command.erased_rows,
        refused=command.refused,
    )
