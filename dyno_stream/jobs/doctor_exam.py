"""What every check of ``dyno-stream doctor`` shares: the findings so far, the settings, the
admin connection, and what one check learns for the next (topics described, members
reached). The checks live in ``jobs.doctor`` and the ``doctor_*`` modules beside it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka.admin import AdminClient

from dyno_stream.config import Settings

Status = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str
    fix: str = ""


def mebibytes(n: float) -> str:
    return f"{n / (1 << 20):,.0f} MiB" if n < 10 << 30 else f"{n / (1 << 30):,.1f} GiB"


def duration(ms: float) -> str:
    s = ms / 1000
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


class Examination:
    """One run of the checks: each adds its findings here."""

    def __init__(
        self,
        settings: Settings,
        *,
        now: Callable[[], float] = time.time,
        timeout_s: float | None = None,
        http_timeout_s: float = 3.0,
    ) -> None:
        self.s = settings
        self.now = now
        self.timeout = timeout_s or settings.kafka.connect_timeout_s
        self.http_timeout = http_timeout_s
        self.findings: list[Finding] = []
        self._admin: AdminClient | None = None
        self._topics: dict[str, Any] = {}
        #: members' advertised addresses that answered ``/healthz``
        self._reached: list[str] = []
        self._configs: dict[str, dict[str, str]] = {}

    def add(self, check: str, status: Status, detail: str, fix: str = "") -> None:
        self.findings.append(Finding(check, status, detail, fix))

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(self.s.kafka.librdkafka())
        return self._admin
