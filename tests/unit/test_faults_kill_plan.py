"""The fault suite's SIGKILL plan: every phase is planned, whatever the seed.

A pure function of the seed; the test that kills workers by it, against the real broker, is
in ``tests/integration/test_faults.py``.
"""

from __future__ import annotations

import random

import pytest
from helpers import kill_plan

pytestmark = pytest.mark.faults


def test_kill_plan_has_every_phase_whatever_the_seed() -> None:
    for seed in range(200):
        for kills in (3, 5, 20):
            plan = kill_plan(kills, random.Random(seed))
            assert len(plan) == kills and plan[0] == "backlog" and plan[-1] == "idle", plan
            assert "start-up" in plan, plan
            assert plan.index("idle") > max(i for i, p in enumerate(plan) if p != "idle")
