"""Asking a running worker over its HTTP endpoint (``stream.http``)."""

from __future__ import annotations

import urllib.error
import urllib.request
from email.message import Message
from typing import Any


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body of a GET to a worker's endpoint; an error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 307 is an answer to pass on, not to follow


_opener = urllib.request.build_opener(_NoRedirect)


def http_answer(
    url: str, timeout: float, headers: dict[str, str] | None = None
) -> tuple[int, bytes, Message]:
    """Status, body and headers of a GET sent with ``headers``; an error status and a
    redirect (not followed) are answers too. Raises OSError when nothing answered."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _opener.open(request, timeout=timeout) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers
