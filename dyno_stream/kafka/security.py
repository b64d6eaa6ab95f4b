"""Failing fast when Kafka refuses our login or our TLS trust.

librdkafka treats a refused SASL login or an unverifiable broker certificate like any other
broken connection: it logs a line, backs off and retries for ever, and a blocking call such
as ``list_topics`` ends only after its full timeout with "Broker transport failure", which
names neither cause. A wrong password does not heal by retrying, so a worker that retries
silently looks alive (a process, a loop that turns) while it does nothing.

:class:`AuthWatch` is an ``error_cb`` that notices these errors as librdkafka reports them;
callers check it and stop with a :class:`~dyno_stream.core.errors.KafkaAuthError` that says what
failed and which settings to fix. Its messages name the user, never the password.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata

from dyno_stream.config import KafkaSettings
from dyno_stream.core.errors import KafkaAdminError, KafkaAuthError

__all__ = ["AuthWatch", "list_topics_checked"]

#: librdkafka's error codes for "the broker will not have us", whatever the retries.
_REFUSED = (KafkaError._AUTHENTICATION, KafkaError._SSL)


class AuthWatch:
    """An ``error_cb`` for librdkafka clients that remembers the first refused connection.

    Pass it as ``"error_cb"`` in a client's config. librdkafka calls it from the thread that
    polls the client, so :meth:`check` right after a poll sees what that poll reported.
    """

    def __init__(
        self, kafka: KafkaSettings, *, also: Callable[[KafkaError], None] | None = None
    ) -> None:
        """``also`` sees every error too (a client has one ``error_cb``): the connection's
        watch, for one."""
        self._kafka = kafka
        self._also = also
        self.failure: KafkaError | None = None

    def __call__(self, err: KafkaError) -> None:
        if self.failure is None and err.code() in _REFUSED:
            self.failure = err
        if self._also is not None:
            self._also(err)

    def config(self) -> dict[str, Any]:
        """The client settings that install this watch."""
        return {"error_cb": self}

    def check(self) -> None:
        """Raise :class:`KafkaAuthError` if a connection was refused since this watch began."""
        if self.failure is not None:
            raise KafkaAuthError(self.describe(self.failure))

    def describe(self, err: KafkaError) -> str:
        """What failed and which settings to look at, in one line."""
        k = self._kafka
        text = _scrub(err.str(), k)
        if err.code() == KafkaError._AUTHENTICATION:
            return (
                f"Kafka at {k.bootstrap_servers} refused the login (authentication failed): "
                f"{text}. Check kafka.security_protocol ({k.security_protocol}), "
                f"kafka.sasl_mechanism ({k.sasl_mechanism}), kafka.sasl_username "
                f"({k.sasl_username!r}) and kafka.sasl_password (DYNO_KAFKA__SASL_PASSWORD)"
            )
        return (
            f"TLS with Kafka at {k.bootstrap_servers} failed: {text}. Check "
            f"kafka.security_protocol ({k.security_protocol}) and kafka.ssl_ca_location "
            f"({k.ssl_ca_location!r}), and that the broker's certificate names the host dialled"
        )


def _scrub(text: str, kafka: KafkaSettings) -> str:
    """``text`` with the configured secrets masked: belt and braces for error messages."""
    for secret in (kafka.sasl_password, kafka.ssl_key_password):
        value = secret.get_secret_value() if secret is not None else ""
        if value:
            text = text.replace(value, "***")
    return text


def list_topics_checked(
    admin: AdminClient, watch: AuthWatch, timeout: float, bootstrap: str
) -> ClusterMetadata:
    """``admin.list_topics`` that fails within a second when the broker refuses us.

    Asks in short slices and serves the client's callbacks between them, since a blocking
    ``list_topics`` would hide a refused login behind a timeout (see the module docstring).
    ``admin`` must have ``watch`` as its ``error_cb``. Raises :class:`KafkaAuthError` on a
    refused login or TLS handshake, :class:`KafkaAdminError` if Kafka does not answer in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            return admin.list_topics(timeout=max(0.05, min(1.0, remaining)))
        except KafkaException as exc:
            admin.poll(0)  # runs error_cb for what went wrong meanwhile
            watch.check()
            if time.monotonic() >= deadline:
                raise KafkaAdminError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
