"""The local broker's secured listeners: SCRAM logins over SASL, and TLS from PEM files.

Besides the open PLAINTEXT listener (which the controller link and admin work keep using, on
loopback), a :class:`~dyno_stream.devtools.broker.LocalBroker` can open a SASL_PLAINTEXT
listener with SCRAM logins (:class:`ScramUser`) and a TLS listener from PEM files
(:class:`BrokerTls`; SASL_SSL when there are SCRAM users, else SSL), so clients can be tested
against the same authentication and encryption a production cluster asks of them.
:class:`ListenerSecurity` is everything a start does for them: their lines in
server.properties, the PEM key store, the SCRAM credentials, and the wait until they log in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from dyno_stream.core.errors import LocalBrokerError
from dyno_stream.devtools.broker.processes import LOOPBACK_HOST, bootstrap_reachable

ScramMechanismName = Literal["SCRAM-SHA-256", "SCRAM-SHA-512"]

#: Mechanisms the SASL listeners offer; a login is checked against its own mechanism's
#: credential, so offering both costs nothing and lets clients pick.
_SCRAM_MECHANISMS: Final[tuple[ScramMechanismName, ...]] = ("SCRAM-SHA-256", "SCRAM-SHA-512")
#: PBKDF2 rounds for stored SCRAM credentials (Kafka accepts 4096..16384).
_SCRAM_ITERATIONS: Final = 8192
_SCRAM_LOGIN: Final = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


@dataclass(frozen=True)
class ScramUser:
    """A login the broker's SASL listeners accept (the password never shows in a repr)."""

    name: str
    password: str = field(repr=False)
    mechanism: ScramMechanismName = "SCRAM-SHA-512"

    def client_config(self) -> dict[str, str]:
        """The librdkafka settings that log in as this user (without the security protocol)."""
        return {
            "sasl.mechanism": self.mechanism,
            "sasl.username": self.name,
            "sasl.password": self.password,
        }


@dataclass(frozen=True)
class BrokerTls:
    """PEM files for the broker's TLS listener.

    ``certificate`` holds the broker's certificate, then any intermediates (a chain, leaf
    first); its subject alternative names must include ``127.0.0.1``, the address clients
    dial, since librdkafka verifies the host name by default. ``private_key`` is its key,
    unencrypted PKCS#8 (``-----BEGIN PRIVATE KEY-----``, what ``openssl pkcs8 -topk8 -nocrypt``
    writes), the only unencrypted form Kafka's PEM key store reads.
    """

    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class ListenerSecurity:
    """One broker's secured listeners, and the part of each start that makes them usable.

    Made afresh from a broker's settings whenever needed (it holds no state of its own), so a
    broker whose settings were changed after it was made is secured as it now says.
    """

    scram_users: tuple[ScramUser, ...]
    #: Port of the SASL_PLAINTEXT listener (SCRAM); None: no such listener.
    sasl_port: int | None
    #: Port of the TLS listener (SASL_SSL with ``scram_users``, else SSL); needs ``tls``.
    ssl_port: int | None
    tls: BrokerTls | None
    #: Where the TLS listener's key store is written: the key, then the certificate chain.
    keystore_file: Path

    @property
    def sasl_bootstrap(self) -> str | None:
        """``bootstrap.servers`` of the SASL_PLAINTEXT listener, if there is one."""
        return None if self.sasl_port is None else f"{LOOPBACK_HOST}:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str | None:
        """``bootstrap.servers`` of the TLS listener, if there is one."""
        return None if self.ssl_port is None else f"{LOOPBACK_HOST}:{self.ssl_port}"

    @property
    def ssl_protocol(self) -> Literal["SASL_SSL", "SSL"]:
        """The security protocol of the TLS listener: SASL_SSL when there are SCRAM users."""
        return "SASL_SSL" if self.scram_users else "SSL"

    def ports(self) -> list[tuple[int, str]]:
        """The secured listeners' ports, with the role named in error messages."""
        ports = []
        if self.sasl_port is not None:
            ports.append((self.sasl_port, "SASL"))
        if self.ssl_port is not None:
            ports.append((self.ssl_port, "TLS"))
        return ports

    def listeners(self) -> list[tuple[str, int]]:
        """The secured client listeners (name = security protocol) and their ports."""
        listeners = []
        if self.sasl_port is not None:
            listeners.append(("SASL_PLAINTEXT", self.sasl_port))
        if self.ssl_port is not None:
            listeners.append((self.ssl_protocol, self.ssl_port))
        return listeners

    def server_properties(self) -> dict[str, str]:
        """Settings of the SASL and TLS listeners (none without them).

        Kafka wants a JAAS login module per SASL listener and mechanism even where, as here,
        it only checks logins against the SCRAM credentials in the cluster metadata.
        """
        props: dict[str, str] = {}
        sasl_listeners = [name for name, _ in self.listeners() if name.startswith("SASL_")]
        if sasl_listeners:
            props["sasl.enabled.mechanisms"] = ",".join(_SCRAM_MECHANISMS)
            for name in sasl_listeners:
                for mechanism in _SCRAM_MECHANISMS:
                    key = f"listener.name.{name.lower()}.{mechanism.lower()}.sasl.jaas.config"
                    props[key] = _SCRAM_LOGIN
        if self.ssl_port is not None:
            prefix = f"listener.name.{self.ssl_protocol.lower()}."
            props[prefix + "ssl.keystore.type"] = "PEM"
            props[prefix + "ssl.keystore.location"] = str(self.keystore_file)
        return props

    def write_keystore(self) -> None:
        """Join the TLS key and certificate chain into the one PEM file Kafka reads.

        Checked here, because Kafka's own complaint about a key in the wrong form is a stack
        trace deep in its log. Written owner-only: it holds a private key.
        """
        if self.tls is None:
            self.keystore_file.unlink(missing_ok=True)
            return
        try:
            key = self.tls.private_key.read_text(encoding="ascii")
            chain = self.tls.certificate.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise LocalBrokerError(f"cannot read the broker's TLS files: {exc}") from exc
        if "-----BEGIN PRIVATE KEY-----" not in key:
            raise LocalBrokerError(
                f"{self.tls.private_key} is not an unencrypted PKCS#8 PEM key "
                "('-----BEGIN PRIVATE KEY-----'); convert it with "
                "'openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8'"
            )
        if "-----BEGIN CERTIFICATE-----" not in chain:
            raise LocalBrokerError(f"{self.tls.certificate} holds no PEM certificate")
        fd = os.open(self.keystore_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key.strip() + "\n" + chain.strip() + "\n")

    def secure(self, admin_bootstrap: str, deadline: float, logs_tail: Callable[[], str]) -> None:
        """Store the SCRAM users' passwords, then wait until each secured listener logs in.

        ``admin_bootstrap`` is the broker's open PLAINTEXT listener, through which the
        credentials are stored; ``logs_tail`` gives the broker's logs for an error message.
        """
        if self.scram_users:
            self._store_scram_users(admin_bootstrap, deadline)
        probes: list[tuple[str, str, dict[str, Any]]] = []
        if self.sasl_bootstrap is not None:
            for user in self.scram_users:
                conf = {"security.protocol": "SASL_PLAINTEXT", **user.client_config()}
                probes.append(("SASL_PLAINTEXT", self.sasl_bootstrap, conf))
        if self.ssl_bootstrap is not None:
            # Only "is it up and does the login work": the clients under test verify the
            # certificate themselves, against a CA this broker is not told about.
            tls: dict[str, Any] = {
                "security.protocol": self.ssl_protocol,
                "enable.ssl.certificate.verification": False,
            }
            for user in self.scram_users[:1]:
                tls.update(user.client_config())
            probes.append((self.ssl_protocol, self.ssl_bootstrap, tls))
        for listener, bootstrap, conf in probes:
            while not bootstrap_reachable(
                bootstrap, max(0.1, min(2.0, deadline - time.monotonic())), conf
            ):
                if time.monotonic() >= deadline:
                    who = f" as {conf['sasl.username']!r}" if "sasl.username" in conf else ""
                    raise LocalBrokerError(
                        f"the broker's {listener} listener at {bootstrap} did not accept a "
                        f"connection{who} in time; its logs end with:\n"
                        f"{logs_tail() or '(empty)'}"
                    )
                time.sleep(0.2)

    def _store_scram_users(self, admin_bootstrap: str, deadline: float) -> None:
        """Upsert every SCRAM user's credential through the open PLAINTEXT listener.

        Done on every start rather than with ``kafka-storage format --add-scram``: that works
        only on a fresh home and would put the passwords on a command line, where any local
        user can read them. The upsert also makes a changed password take effect at once.
        """
        admin = AdminClient({"bootstrap.servers": admin_bootstrap, "log_level": 0})
        upserts: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(
                user.name,
                ScramCredentialInfo(
                    ScramMechanism[user.mechanism.replace("-", "_")], _SCRAM_ITERATIONS
                ),
                user.password.encode("utf-8"),
            )
            for user in self.scram_users
        ]
        remaining = max(1.0, deadline - time.monotonic())
        futures = admin.alter_user_scram_credentials(upserts, request_timeout=remaining)
        for name, future in futures.items():
            try:
                future.result(timeout=remaining)
            except KafkaException as exc:
                raise LocalBrokerError(
                    f"storing the SCRAM login of {name!r} failed: {exc}"
                ) from exc
