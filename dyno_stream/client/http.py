"""Asking a worker's HTTP endpoint (``stream.http``): the one GET every caller uses.

Every status is an answer, a redirect too: a 307 names the partition's new owner, and the
caller decides whether to follow it (a routed read must, to learn the new owner). Raises
``OSError`` when nothing answered.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from email.message import Message
from typing import Any, NamedTuple


class HttpAnswer(NamedTuple):
    """A worker's answer: its status, body and headers."""

    status: int
    body: bytes
    headers: Message


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 307 is an answer to pass on, not to follow


_opener = urllib.request.build_opener(_NoRedirect)


def bearer(token: str | None) -> dict[str, str]:
    """The headers of a request to an endpoint that ``[worker] http_token`` guards."""
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> HttpAnswer:
    """The answer to a GET of ``url`` sent with ``headers``, whatever its status."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _opener.open(request, timeout=timeout) as resp:
            return HttpAnswer(resp.status, resp.read(), resp.headers)
    except urllib.error.HTTPError as exc:
        return HttpAnswer(exc.code, exc.read(), exc.headers)
