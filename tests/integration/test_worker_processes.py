"""``dyno-stream worker --processes 2``: two members of the group as child processes of one
worker, against the real broker, sharing one data dir.

- A backlog is consumed by both children, every op exactly once into the right item; the
  worker's one /metrics sums the children's counters; SIGTERM to the parent stops every
  child cleanly (exit status 0) with every offset committed.
- A SIGKILLed child is restarted (the log says which, how it died, when it restarts), the
  group rebalances, and nothing is lost or applied twice.
- A child that cannot start is given up after its start-up failures in a row: exit status
  1, with a line naming the child and its error.
- Reads at the parent's address are answered as a single worker answers them: ``ls`` lists
  every item once, ``get`` finds the items of both children's partitions, ``op --then-get``
  reads its own write behind a backlog, the token guards reads (the children's endpoints
  too), a partition held by another worker is a 307 to it, and the read limit holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition
from conftest import free_port
from helpers import (
    Produced,
    WorkerProcess,
    check_against_reference,
    cli_env,
    high_watermark,
    last_snapshots_by_offset,
    random_op,
    run_cli,
    wait_caught_up,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

from dyno_stream.client import DynoClient, MaterializedView
from dyno_stream.client.http import http_get
from dyno_stream.config import Settings
from dyno_stream.kafka.members import item_partition
from dyno_stream.kafka.reading import committed_offsets as group_offsets
from dyno_stream.kafka.topics import ensure_topics

PARTITIONS = 4
N_ITEMS = 300


class Processes(WorkerProcess):
    """``dyno-stream worker --processes 2`` with its HTTP endpoint on a free port."""

    def __init__(self, settings: Settings, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        super().__init__(
            settings,
            "procs",
            tmp_path,
            env={"DYNO_WORKER__PROCESSES": "2", "DYNO_WORKER__HTTP_PORT": str(self.port), **env},
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def health(self) -> dict[str, Any]:
        try:
            _code, body, _ = http_get(f"{self.url}/healthz", timeout=5)
        except OSError:
            return {}
        answer: dict[str, Any] = json.loads(body)
        return answer

    def children(self) -> list[dict[str, Any]]:
        children: list[dict[str, Any]] = self.health().get("children", [])
        return children

    def split(self) -> bool:
        """Both children running, each with a share of the partitions, all of them held."""
        kids = self.children()
        held = [set(c.get("partitions", [])) for c in kids if c.get("status") == "ok"]
        return len(held) == 2 and all(held) and len(held[0] | held[1]) == PARTITIONS


def metric_samples(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called ``name`` at ``url``/metrics, by their labels."""
    _code, body, _ = http_get(f"{url}/metrics", timeout=5)
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(url: str, name: str) -> float:
    return sum(metric_samples(url, name).values())


def committed_offsets(s: Settings) -> dict[int, int]:
    parts = [TopicPartition(s.topics.ops, p) for p in range(PARTITIONS)]
    return group_offsets(s, s.worker.group_id, parts, timeout=30)


def test_two_processes_consume_a_backlog_exactly_once_sum_their_metrics_and_stop_on_sigterm(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = make_settings(partitions=PARTITIONS)
    ensure_topics(s)
    produced = Produced()
    rnd = random.Random(1414)
    with DynoClient(s) as client:  # the backlog, before the worker starts
        produced.send(client, (random_op(rnd, i, N_ITEMS) for i in range(20_000)))
        client.flush(60)
    worker = Processes(s, tmp_path)
    view = MaterializedView(s).start()
    try:
        wait_until(worker.split, 120, lambda: f"{worker.health()}{worker.tail()}")
        # more once both hold partitions, so both have work whatever one did of the backlog
        with DynoClient(s) as client:
            produced.send(client, (random_op(rnd, i, N_ITEMS) for i in range(20_000, 30_000)))
            client.flush(60)
        ref = produced.reference()
        wait_caught_up(view, ref, 120, worker.tail())
        kids = worker.children()

        # every op once, into the right item: each item's last snapshot is the replay of
        # exactly its ops (value, number of changes, chain hash)
        check_against_reference(last_snapshots_by_offset(s), ref, "the snapshot topic")

        # both children did part of the work, and the worker's one /metrics sums them
        per_child = [total(c["http"], "dyno_ops_applied_total") for c in kids]
        assert all(n > 0 for n in per_child), per_child
        assert total(worker.url, "dyno_ops_applied_total") == sum(per_child) == 30_000
        assert total(worker.url, "dyno_events_consumed_total") == 30_000
        assert total(worker.url, "dyno_assigned_partitions") == PARTITIONS  # a livesum gauge
        assert total(worker.url, "dyno_ops_partitions") == PARTITIONS  # a livemax gauge
        skews = total(worker.url, "dyno_clock_skew_seconds_count")
        assert skews == sum(total(c["http"], "dyno_clock_skew_seconds_count") for c in kids)
        assert skews >= 30_000

        pids = {c["pid"] for c in kids}
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait_exit(120) == 0, worker.tail()
        log = worker.text()
        for pid in pids:
            assert re.search(rf"child \d \(pid {pid}\) stopped", log), worker.tail(4000)
            assert not _alive(pid), f"child {pid} outlived its parent"
        # every offset committed on the way out
        ends = {p: high_watermark(s, s.topics.ops, p)[1] for p in range(PARTITIONS)}
        assert committed_offsets(s) == ends
    finally:
        view.close()
        worker.cleanup()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_sigkilled_child_is_restarted_and_nothing_is_lost_or_applied_twice(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = make_settings(partitions=PARTITIONS)
    ensure_topics(s)
    worker = Processes(s, tmp_path)  # fast_group: a 3 s session, so the kill is noticed soon
    view = MaterializedView(s).start()
    produced = Produced()
    rnd = random.Random(1515)
    stop_producing = threading.Event()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with DynoClient(s) as client:
                i = 3_000
                while not stop_producing.is_set():
                    produced.send(client, (random_op(rnd, i + k, N_ITEMS) for k in range(100)))
                    i += 100
                    client.flush(30)
                    time.sleep(0.05)
        except BaseException as exc:
            failure.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    try:
        wait_until(worker.split, 60, lambda: f"{worker.health()}{worker.tail()}")
        # a first part applied before the kill: every partition's store has an offset
        with DynoClient(s) as client:
            produced.send(client, (random_op(rnd, i, N_ITEMS) for i in range(3_000)))
            client.flush(60)
        wait_caught_up(view, produced.reference(), 120, worker.tail())
        producer.start()
        wait_until(lambda: len(produced.models) >= 5_000, 60, lambda: "producing")
        victim = worker.children()[1]
        worker_pid = worker.proc.pid
        os.kill(victim["pid"], signal.SIGKILL)
        wait_until(lambda: len(produced.models) >= 10_000, 120, lambda: "producing")
        stop_producing.set()
        producer.join(60)
        assert not failure, failure

        # the log names the child, how it died and when it comes back; it comes back
        died = rf"child 1 \(pid {victim['pid']}\) was killed by SIGKILL after running [\d.]+ s"
        wait_until(
            lambda: re.search(rf"{died}; restarting it in 1\.0 s", worker.text()) is not None,
            30,
            worker.tail,
        )
        wait_until(
            lambda: re.search(r"child 1 started \(pid \d+\), restart 1", worker.text()) is not None,
            30,
            worker.tail,
        )
        # the group rebalances: both children hold partitions again, the new child among them
        wait_until(worker.split, 90, lambda: f"{worker.health()}{worker.tail(4000)}")
        again = worker.children()[1]
        assert again["pid"] != victim["pid"] and again["restarts"] == 1
        assert worker.proc.pid == worker_pid and worker.alive()
        # the data dir is shared: whoever took the dead child's partitions reopened their
        # stores where it left them (the lock went with the dead process), restoring nothing
        started = rf"started {re.escape(s.topics.ops)}/\d+ from offset (\S+)"

        def taken() -> list[str]:  # what was started after the kill, and from where
            return re.findall(started, worker.text().split("was killed by SIGKILL", 1)[1])

        wait_until(lambda: len(taken()) >= 2, 60, lambda: worker.tail(4000))
        assert "beginning" not in taken(), worker.tail(4000)
        assert "items from snapshots" not in worker.text(), worker.tail(4000)

        # nothing lost, nothing applied twice (wait_caught_up fails on too many changes)
        ref = produced.reference()
        wait_caught_up(view, ref, 120, worker.tail())
        check_against_reference(last_snapshots_by_offset(s), ref, "the snapshot topic")
        restarts = metric_samples(worker.url, "dyno_worker_process_restarts_total")
        assert restarts == {(("child", "0"),): 0.0, (("child", "1"),): 1.0}

        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait_exit(120) == 0, worker.tail()
    finally:
        stop_producing.set()
        view.close()
        worker.cleanup()


def test_a_child_that_cannot_start_is_given_up_with_its_error(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = make_settings(partitions=PARTITIONS)
    ensure_topics(s)
    not_a_dir = tmp_path / "data-file"
    not_a_dir.write_text("a file where the data dir should be")
    worker = Processes(s, tmp_path, DYNO_WORKER__DATA_DIR=str(not_a_dir))
    try:
        # five start-up failures in a row, 1 + 2 + 4 + 8 s apart
        status = worker.wait_exit(150)
        log = worker.text()
        assert status == 1, worker.tail(4000)
        gave_up = [line for line in log.splitlines() if "giving up" in line]
        assert gave_up, worker.tail(4000)
        assert re.search(
            r"child \d \(pid \d+\) exited with status 1 during start-up .*FileExistsError.*"
            r"giving up \(it failed 5 times in a row during start-up\)",
            gave_up[0],
        ), gave_up
        assert "worker stopped: child" in log  # the last line says why, too
    finally:
        worker.cleanup()


TOKEN = "procs-s3cret"


def _held(worker: Processes) -> list[set[int]]:
    """Each child's partitions, by number."""
    return [
        {int(label.rsplit("/", 1)[1]) for label in c.get("partitions", [])}
        for c in worker.children()
    ]


def test_reads_at_the_parent_are_answered_as_a_single_worker_answers_them(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """``ls``, ``get`` and ``op --then-get`` at the address of ``worker --processes 2``, with
    ``http_token`` set; a read without the token is refused, at the parent and the children."""
    s = make_settings(partitions=PARTITIONS)
    ensure_topics(s)
    # each batch waits a second for more ops once it has one: an op is applied that late
    worker = Processes(s, tmp_path, DYNO_WORKER__HTTP_TOKEN=TOKEN, DYNO_WORKER__BATCH_LINGER_S="1")
    env = cli_env(
        s,
        DYNO_WORKER__HTTP_PORT=str(worker.port),
        DYNO_WORKER__HTTP_TOKEN=TOKEN,
        DYNO_WORKER__READ_TIMEOUT_S="120",  # the CLI's patience, behind the backlog below
    )
    names = [f"proc-{i:03d}" for i in range(200)]
    try:
        wait_until(worker.split, 120, lambda: f"{worker.health()}{worker.tail()}")
        with DynoClient(s) as client:
            for i, name in enumerate(names):
                client.put_item(name, {"n": i})
            client.flush(60)
        applied = lambda: total(worker.url, "dyno_ops_applied_total") >= len(names)  # noqa: E731
        wait_until(applied, 120, worker.tail)

        # ls: every item once, in name order, from the pages of both children merged
        r = run_cli(env, "ls", "--prefix", "proc-")
        assert r.returncode == 0, r.stderr + worker.tail()
        assert r.stdout.split() == names

        # get: an item of each child's partitions; an item never written is "no such item"
        held = _held(worker)
        assert len(held) == 2 and all(held), worker.children()
        for partitions in held:
            name = next(n for n in names if item_partition(n, PARTITIONS, "murmur2") in partitions)
            r = run_cli(env, "get", name)
            assert r.returncode == 0, r.stderr + worker.tail()
            assert json.loads(r.stdout)["value"] == {"n": int(name[5:])}
        assert run_cli(env, "get", "proc-never-written").returncode == 3

        # op --then-get: the op's result, though the child applies it up to a second after
        # it arrives (batch_linger_s): the command's read comes sooner, and waits for it
        r = run_cli(env, "op", "proc-007", "incAttrBy", '{"field":"n","by":1000}', "--then-get")
        assert r.returncode == 0, r.stderr + worker.tail()
        assert json.loads(r.stdout.split("\n", 1)[1])["value"] == {"n": 1007}, r.stdout

        # the token: refused without it (401), at the parent and at each child's own port
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for base in [worker.url, *(c["http"] for c in worker.children())]:
            for path in ("/items/proc-001", "/items?prefix=proc-", "/rows?item=proc-001"):
                code, body, _ = http_get(f"{base}{path}", 30)
                assert code == 401, (base, path, code, body[:200])
        code, body, _ = http_get(f"{worker.url}/items/proc-001", 30, bearer)
        assert code == 200 and json.loads(body)["value"] == {"n": 1}, body[:200]
    finally:
        worker.cleanup()


def test_the_parent_redirects_to_another_worker_and_limits_reads_at_once(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """With a single worker in the group too: the parent answers 307 at that worker for an
    item of its partition; with ``http_max_reads`` 1, a read while another waits (``after=``
    an offset not yet written) is answered 503 ``too many reads at once``."""
    s = make_settings(partitions=PARTITIONS)
    ensure_topics(s)
    limits = {"DYNO_WORKER__HTTP_MAX_READS": "1", "DYNO_WORKER__READ_TIMEOUT_S": "30"}
    worker = Processes(s, tmp_path, **limits)
    solo_port = free_port()
    solo = WorkerProcess(
        s, "solo", tmp_path, env={"DYNO_WORKER__HTTP_PORT": str(solo_port), **limits}
    )
    stop = threading.Event()
    try:

        def three_members() -> bool:
            held = [p for p in _held(worker) if p]
            return (
                len(held) == 2
                and bool(solo.partitions())
                and (len(held[0] | held[1] | solo.partitions()) == PARTITIONS)
            )

        wait_until(three_members, 120, lambda: f"{worker.health()}{worker.tail()}{solo.tail()}")
        theirs = next(
            f"solo-{i}"
            for i in range(1000)
            if item_partition(f"solo-{i}", PARTITIONS, "murmur2") in solo.partitions()
        )
        child_partition = min(_held(worker)[0])
        ours = next(
            f"ours-{i}"
            for i in range(1000)
            if item_partition(f"ours-{i}", PARTITIONS, "murmur2") == child_partition
        )
        reader = s.model_copy(
            update={"worker": s.worker.model_copy(update={"http_port": worker.port})}
        )
        with DynoClient(reader) as client:
            for name in (theirs, ours):
                d = client.put_item(name, {"at": name}).result(30)
                item = client.get(name, after=d, timeout=60)
                assert item is not None and item["value"] == {"at": name}, (name, item)

        # 307 at the worker that holds the partition, once the children's directory says so
        location = f"http://127.0.0.1:{solo_port}/items/{theirs}"

        def redirected() -> bool:
            code, _body, headers = http_get(f"{worker.url}/items/{theirs}", 30)
            return code == 307 and headers["Location"] == location

        wait_until(redirected, 30, lambda: str(http_get(f"{worker.url}/items/{theirs}", 30)))

        # the read limit: one read waits on an offset not yet written; another is refused
        def hold() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    url = f"{worker.url}/items/{ours}?after={child_partition}:{10**12}"
                    http_get(url, 60)

        threading.Thread(target=hold, daemon=True).start()
        answers: list[tuple[int, bytes]] = []

        def refused() -> bool:
            code, body, headers = http_get(f"{worker.url}/items/{ours}", 30)
            answers.append((code, body[:200]))
            return (
                code == 503
                and json.loads(body)["error"] == "too many reads at once"
                and headers["Retry-After"] == "1"
            )

        wait_until(refused, 30, lambda: f"answers: {answers[-5:]}")
    finally:
        stop.set()
        worker.cleanup()
        solo.cleanup()
