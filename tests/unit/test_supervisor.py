"""The pure parts of ``dyno-stream worker --processes N`` (``stream.supervisor``): the pause
before a restart, when to give up, the exit status, and each child's settings."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from dyno_stream.config import Settings, load_settings, worker_processes
from dyno_stream.core.errors import ConfigError
from dyno_stream.stream.supervisor import (
    EXIT_CLEAN,
    EXIT_GAVE_UP,
    EXIT_UNCLEAN_STOP,
    Ending,
    RestartPolicy,
    RestartRecord,
    child_settings,
    describe_exit,
    exit_status,
)

POLICY = RestartPolicy(
    first_delay_s=1.0, max_delay_s=30.0, healthy_after_s=30.0, startup_failures_to_give_up=5
)


def test_the_pause_doubles_from_the_first_and_stops_at_the_cap() -> None:
    assert [POLICY.delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_crashes_after_short_runs_grow_the_pause_and_a_healthy_run_resets_it() -> None:
    record = RestartRecord(POLICY)
    # running, but crashing within the healthy time: restarted each time, pause growing
    assert [record.exited(running_for_s=5.0, heals=True) for _ in range(7)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0,
    ]  # fmt: skip
    # a crash after a healthy run starts over
    assert record.exited(running_for_s=600.0, heals=True) == 1.0
    assert record.exited(running_for_s=1.0, heals=True) == 2.0


def test_a_child_that_keeps_failing_during_start_up_is_given_up() -> None:
    record = RestartRecord(POLICY)
    delays = [record.exited(running_for_s=None, heals=True) for _ in range(4)]
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert record.exited(running_for_s=None, heals=True) is None  # the fifth in a row


def test_start_up_failures_count_only_in_a_row() -> None:
    record = RestartRecord(POLICY)
    for _ in range(4):
        assert record.exited(running_for_s=None, heals=True) is not None
    # it got running once (briefly): the start-up failures in a row start over
    assert record.exited(running_for_s=2.0, heals=True) is not None
    for _ in range(4):
        assert record.exited(running_for_s=None, heals=True) is not None
    assert record.exited(running_for_s=None, heals=True) is None


def test_an_error_no_restart_mends_is_given_up_at_once() -> None:
    assert RestartRecord(POLICY).exited(running_for_s=120.0, heals=False) is None


def test_exit_status_says_what_happened() -> None:
    assert exit_status(Ending()) == EXIT_CLEAN == 0
    assert exit_status(Ending(unclean=["child 1 (pid 9) exited with status 1"])) == 3
    assert EXIT_UNCLEAN_STOP == 3
    gave_up = Ending(gave_up="child 0 ...; giving up", unclean=["child 1 ..."])
    assert exit_status(gave_up) == EXIT_GAVE_UP == 1
    # a second signal outranks everything: the children were killed at once
    assert exit_status(Ending(gave_up="x", at_once=signal.SIGINT)) == 130
    assert exit_status(Ending(at_once=signal.SIGTERM)) == 143


def test_describe_exit_names_the_signal_or_the_status() -> None:
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(0) == "exited with status 0"


def _settings(tmp_path: Path, **worker: object) -> Settings:
    return load_settings(
        worker={"data_dir": tmp_path, "http_port": 9464, "processes": 4, **worker},
        kafka={"client_id": "dyno-stream"},
    )


def test_child_settings_keep_the_group_and_the_data_dir_and_change_what_must_differ(
    tmp_path: Path,
) -> None:
    s = _settings(tmp_path)
    children = [child_settings(s, i, 4) for i in range(4)]
    for i, c in enumerate(children):
        assert c.worker.group_id == s.worker.group_id
        assert c.worker.data_dir == s.worker.data_dir  # stores are per partition: shared
        assert c.topics == s.topics
        assert c.worker.processes == 1  # a child runs the worker itself
        assert c.worker.http_port == 0  # it serves the parent on a port of its own
        assert c.worker.instance_id is None  # dynamic membership stays dynamic
        assert c.kafka.client_id == f"dyno-stream-{i}"
    assert s.worker.processes == 4 and s.worker.http_port == 9464  # the worker's untouched


def test_child_settings_divide_the_memory_budget_among_the_children(tmp_path: Path) -> None:
    s = _settings(tmp_path, memory_mb=1000)
    assert [child_settings(s, i, 4).worker.memory_mb for i in range(4)] == [250] * 4
    assert child_settings(s, 0, 1).worker.memory_mb == 1000
    # never below the setting's least, whatever the count
    assert child_settings(_settings(tmp_path, memory_mb=32), 0, 8).worker.memory_mb == 16


def test_child_settings_give_each_static_member_its_own_stable_instance_id(
    tmp_path: Path,
) -> None:
    s = _settings(tmp_path, instance_id="host-a")
    ids = [child_settings(s, i, 3).worker.instance_id for i in range(3)]
    assert ids == ["host-a-0", "host-a-1", "host-a-2"]
    # the same child after a restart: the same id, so it gets its partitions back
    assert child_settings(s, 1, 3).worker.instance_id == "host-a-1"


def test_processes_auto_is_the_cores_this_process_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 2, 5})
    assert worker_processes(_settings(tmp_path, processes="auto").worker) == 3
    assert worker_processes(_settings(tmp_path, processes=2).worker) == 2
    assert worker_processes(load_settings().worker) == 1  # the default: no supervisor


@pytest.mark.parametrize("bad", ["0", "many", "1.5", 257, True])
def test_a_bad_processes_setting_is_named(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"worker\.processes: .* nor 'auto'"):
        load_settings(worker={"processes": bad})


_MEMBER = """
import sys
from dyno_stream.stream.metrics import WorkerMetrics
m = WorkerMetrics()
m.consumer_lag.labels("ops", "3").set(50)
m.consumer_lag.labels("ops", "1").set(7)
m.consumer_lag.remove("ops", "3")  # partition 3 moved to another member
m.clock_skew.observe_many([-5, 0, 20, 20, 70_000])
m.ops_applied.labels("putAttrs").inc(int(sys.argv[1]))
"""


def test_members_metrics_reach_the_parent_through_the_multiprocess_files(
    tmp_path: Path,
) -> None:
    """Two members write their files; the parent's collector sums them: counters, the skew
    histogram (a collector of its own), and a moved partition's lag counts no more."""
    import os
    import subprocess
    import sys

    from prometheus_client.multiprocess import MultiProcessCollector

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for applied in ("3", "4"):
        subprocess.run([sys.executable, "-c", _MEMBER, applied], env=env, check=True)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in MultiProcessCollector(None, path=str(tmp_path)).collect()  # type: ignore[no-untyped-call]
        for s in family.samples
    }
    assert samples[("dyno_ops_applied_total", (("op", "putAttrs"),))] == 7
    assert samples[("dyno_consumer_lag", (("partition", "1"), ("topic", "ops")))] == 14
    assert samples[("dyno_consumer_lag", (("partition", "3"), ("topic", "ops")))] == 0
    assert samples[("dyno_clock_skew_seconds_count", ())] == 10
    # cumulative as Prometheus wants it: -5 ms and 0 at or below 0.0 s, 20 ms below 0.1 s
    assert samples[("dyno_clock_skew_seconds_bucket", (("le", "0.0"),))] == 4
    assert samples[("dyno_clock_skew_seconds_bucket", (("le", "0.1"),))] == 8
    assert samples[("dyno_clock_skew_seconds_bucket", (("le", "60.0"),))] == 8
    assert samples[("dyno_clock_skew_seconds_bucket", (("le", "300.0"),))] == 10
    assert samples[("dyno_clock_skew_seconds_bucket", (("le", "+Inf"),))] == 10
