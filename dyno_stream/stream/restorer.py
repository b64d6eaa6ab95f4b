"""The restorer: readies a newly assigned partition beside the worker's loop.

On a thread of its own it opens the partition's store (waiting while a previous owner on a
shared disk holds its lock), checks the ops topic's partition count, and restores the store
from the snapshot topic's partition of the same number when it is missing or behind. The
loop keeps processing the other partitions meanwhile. A revoke cancels the job; the restore
writes its items and offset in one batch or not at all. The steps: ``docs/design/worker.md``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from dyno_stream.config import Settings
from dyno_stream.core.errors import StoreLockedError
from dyno_stream.core.events import Snapshot
from dyno_stream.store.budget import MemoryBudget
from dyno_stream.store.partition import PartitionStore, remove_stale_copies, set_aside
from dyno_stream.stream.metrics import WorkerMetrics

log = logging.getLogger("dyno_stream.stream.restorer")

#: How often a job tries a store that another worker still holds locked.
LOCK_RETRY_S = 0.5
#: Restores that run at once. A small partition's restore is mostly waiting (a consumer of
#: its own connecting, asking for offsets, a fetch): about 1 s for 300 items in
#: bench_scale, where 2 at a time kept 8 moved partitions waiting 4 s for their turns. 64
#: new partitions at once (bench_memory.py) were all RUNNING after 0.87-1.18 s with 8 at a
#: time and 0.59-0.86 s with 16 (three runs each, alternated, on a loaded machine). Each
#: restore holds its partition's newest snapshots in memory until written: outside the
#: memory budget, and 16 of them at most.
MAX_PARALLEL = 16

#: (partition, cancelled, on_progress) -> each item's newest snapshot from that ops
#: partition, or None when cancelled (``kafka.reading.read_restore_snapshots``)
SnapshotSource = Callable[
    [int, Callable[[], bool], Callable[[int], None]], dict[str, Snapshot] | None
]
#: (topic, partition) -> the ops partition's low watermark: the oldest op Kafka still keeps
LowWatermark = Callable[[str, int], int]
#: (topic, partition) -> the group's committed offset of the ops partition (None: none)
CommittedOffset = Callable[[str, int], int | None]


@dataclass(eq=False)
class RestoreJob:
    """One partition being readied; ``future`` gives its open store (None if cancelled)."""

    topic: str
    partition: int
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    #: snapshot messages read so far (the reader's progress)
    read: int = 0
    future: Future[PartitionStore | None] = field(default_factory=Future)

    @property
    def label(self) -> str:
        return f"{self.topic}/{self.partition}"


class Restorer:
    """Runs restore jobs on a small thread pool of its own."""

    def __init__(
        self,
        settings: Settings,
        metrics: WorkerMetrics,
        snapshots: SnapshotSource,
        low_watermark: LowWatermark,
        committed_offset: CommittedOffset = lambda topic, partition: None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._snapshots = snapshots
        self._low_watermark = low_watermark
        self._committed_offset = committed_offset
        #: shared by every store this worker opens (``[worker] memory_mb``)
        self.budget = MemoryBudget.megabytes(settings.worker.memory_mb)
        self._pool = ThreadPoolExecutor(MAX_PARALLEL, thread_name_prefix="dyno-restore")

    def start(self, topic: str, partition: int, ops_partitions: int | None) -> RestoreJob:
        """Ready the partition's store beside the loop (see the module's docstring)."""
        job = RestoreJob(topic, partition)
        self._pool.submit(self._run, job, ops_partitions)
        return job

    def cancel(self, job: RestoreJob, timeout: float = 30.0) -> None:
        """Stop the job and close its store if it opened one. Waits for it: the store's
        LevelDB lock must be free for the next owner when the revoke returns."""
        job.cancelled.set()
        try:
            ps = job.future.result(timeout)
        except TimeoutError:
            log.error("restore of %s did not stop within %.0fs", job.label, timeout)
            return
        except BaseException:  # its failure no longer matters: the partition is gone
            return
        if ps is not None:
            ps.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, job: RestoreJob, ops_partitions: int | None) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(self._ready(job, ops_partitions))
        except BaseException as exc:
            job.future.set_exception(exc)

    def _ready(self, job: RestoreJob, ops_partitions: int | None) -> PartitionStore | None:
        ps = self._open(job)
        if ps is None:
            return None
        try:
            if ops_partitions is not None:
                ps.check_partitions(ops_partitions)
            ps = self._restore_if_needed(job, ps)
            if ps is not None:
                self._note_published(ps)
                # ready: a copy set aside for this restore, or left by one a crash or a
                # revoke cut short, is never needed again
                remove_stale_copies(ps.store.path.parent, ps.store.path.name)
        except BaseException:
            if ps is not None:
                ps.close()  # release its LevelDB lock for the next owner
            raise
        if ps is not None and job.cancelled.is_set():
            ps.close()
            return None
        return ps

    def _note_published(self, ps: PartitionStore) -> None:
        """A store behind what the group has committed (a partition coming back to this
        worker's disk after another worker moved it on) replays ops whose snapshots that
        worker has published already: newer ones than the replay makes. Committed offsets
        are only ever acknowledged ones, so the replay publishes nothing below it
        (``PartitionStore.published_through``); a snapshot published never goes back.

        A store with no offset after its restore counts as at offset 0: the snapshot topic
        held nothing of the partition, as when every item was deleted and Kafka then removed
        the tombstones; the replay would otherwise publish deleted (even erased) values again.
        """
        next_offset = ps.next_offset or 0
        committed = self._committed_offset(ps.topic, ps.partition)
        if committed is not None and committed > next_offset:
            ps.published_through = committed
            log.info(
                "%s: store at offset %s, the group committed %s: replaying those ops without "
                "publishing again what the last owner published",
                ps.label,
                next_offset,
                committed,
            )

    def _open(self, job: RestoreJob) -> PartitionStore | None:
        """The partition's store, once no other process holds its lock; None if cancelled."""
        said = False
        while not job.cancelled.is_set():
            try:
                return PartitionStore.open(
                    self.settings.worker.data_dir,
                    job.topic,
                    job.partition,
                    self.settings.worker.sync_writes,
                    self.settings.worker.max_attrs,
                    self.budget,
                )
            except StoreLockedError:
                if not said:
                    said = True
                    log.info("store of %s is still locked by its last owner; waiting", job.label)
                job.cancelled.wait(LOCK_RETRY_S)
        return None

    def _restore_if_needed(self, job: RestoreJob, ps: PartitionStore) -> PartitionStore | None:
        """Restore a store that is missing, or behind what the ops topic keeps.

        First from the snapshot topic (each item's newest snapshot becomes its history row),
        then the ops after each snapshot's source offset are replayed as usual. With no
        snapshot of this partition, the ops are replayed from the beginning.
        """
        low = self._low_watermark(ps.topic, ps.partition)
        if ps.next_offset is not None and ps.next_offset >= low:
            return ps  # current: the ops from its offset on are all still in Kafka
        if ps.next_offset is not None:
            ps.close()
            stale = set_aside(ps.store.path)
            log.warning(
                "store of %s is at offset %s but the ops topic starts at %s: moved it to "
                "%s (deleted once the partition is restored) and restoring",
                ps.label,
                ps.next_offset,
                low,
                stale,
            )
            reopened = self._open(job)
            if reopened is None:
                return None
            ps = reopened
        self.metrics.restoring_partitions.inc()
        try:
            snapshots = self._snapshots(
                ps.partition, job.cancelled.is_set, lambda n: setattr(job, "read", n)
            )
            if snapshots is None:  # cancelled
                ps.close()
                return None
            if not snapshots:
                log.info(
                    "restoring %s: no snapshots, replaying the ops from the beginning", ps.label
                )
                return ps
            n = ps.restore_from(list(snapshots.values()), low)
            self._say_ops_deleted_meanwhile(ps)
        finally:
            self.metrics.restoring_partitions.dec()
        seconds = time.monotonic() - job.started
        self.metrics.restored_items.inc(n)
        self.metrics.restore_seconds.observe(seconds)
        log.info(
            "restored %s: %d items from snapshots in %.2fs (%.0f items/s); replaying ops "
            "from offset %s",
            ps.label,
            n,
            seconds,
            n / seconds if seconds else 0.0,
            ps.next_offset,
        )
        return ps

    def _say_ops_deleted_meanwhile(self, ps: PartitionStore) -> None:
        """Retention may delete more ops while the snapshots are read (a slow restore of a
        large partition). Those between the restore's offset and the new start of the topic
        are then gone: the ones in no item's snapshot cannot be applied by anyone. Said, and
        the partition starts at the topic's start (Kafka's out-of-range reset would land
        there too, with nothing said)."""
        now = self._low_watermark(ps.topic, ps.partition)
        if ps.next_offset is None or ps.next_offset >= now:
            return
        log.warning(
            "ops %d-%d of %s were deleted while it was restored (the ops topic's retention): "
            "those in no item's snapshot are lost to the items they touched; replaying from "
            "offset %d",
            ps.next_offset,
            now - 1,
            ps.label,
            now,
        )
        ps.next_offset = now
