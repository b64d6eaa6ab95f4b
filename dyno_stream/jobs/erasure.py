"""Erasure on request: ``dyno-stream erase ITEM [--wait]``.

An ``erase`` command goes through the ops topic, keyed by the item, so its owner applies it
in order with the item's other ops: every row and the cached state go at once, the deleted
marker stays, and the tombstone answers the command. Its ``dyno.erased.rows`` header counts
the rows the partition's store removed: 0 means that store held nothing of the item, and
the command line says "no such item" rather than confirming. Waiting reads those answers
(``compaction.await_answers``), never the group's committed offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from dyno_stream.client.producer import DynoClient, Receipt
from dyno_stream.config import Settings
from dyno_stream.jobs.compaction import Command, answer_ends, await_answers
from dyno_stream.store.compaction_policy import Candidate


@dataclass(frozen=True)
class Erasure:
    """An erase command sent: where it landed, and what the worker answered.

    ``answered``: the worker applied it; ``rows``: the rows its store removed (None when the
    answer did not say, as from a worker that does not count them); ``refused``: the reason
    of its dead letter instead."""

    receipt: Receipt
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
