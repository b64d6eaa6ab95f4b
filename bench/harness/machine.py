"""The machine a benchmark ran on and what else ran on it: load, busiest processes, RSS."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def load() -> list[float]:
    """The load averages (1, 5, 15 minutes), rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def busiest(seconds: float = 0.5, top: int = 6) -> list[dict[str, Any]]:
    """The processes that used the most CPU over ``seconds``, from /proc (what ran beside us)."""
    hz = os.sysconf("SC_CLK_TCK")
    before = _ticks()
    time.sleep(seconds)
    after = _ticks()
    used = [(t - before[pid][0], cmd) for pid, (t, cmd) in after.items() if pid in before and cmd]
    used.sort(reverse=True)
    return [{"cpu": round(t / hz / seconds, 2), "cmd": cmd} for t, cmd in used[:top] if t > 0]


def _ticks() -> dict[int, tuple[int, str]]:
    """Each process's CPU ticks so far (user and system) and its command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry)
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields is not None:
            found[int(entry.name)] = (_ticks_of(fields), _short(cmd))
    return found


def _stat_fields(proc_dir: Path) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first); None when
    the process is gone."""
    try:
        stat = (proc_dir / "stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _ticks_of(fields: list[str]) -> int:
    """User and system CPU ticks, every thread, from ``_stat_fields``."""
    return int(fields[11]) + int(fields[12])


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of one process so far (0 once it is gone)."""
    fields = _stat_fields(Path(f"/proc/{pid}"))
    return 0.0 if fields is None else _ticks_of(fields) / os.sysconf("SC_CLK_TCK")


def _short(cmd: str) -> str:
    """A command line, short: a Kafka broker by its config file, not its JVM flags."""
    args = cmd.split()
    if "kafka.Kafka" in args:
        return "kafka broker " + args[-1]
    return " ".join(args)[:110]


def vm_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(rest.split()[0]) * 1024
    return found


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user and system, every thread) used so far by ``pids`` and their live
    descendants, from /proc: what a contender's processes cost, not the benchmark's own."""
    hz = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is None:
            continue
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = _ticks_of(fields)
    family = set(pids)
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    return sum(ticks.get(pid, 0) for pid in family) / hz
