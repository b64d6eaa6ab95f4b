"""What a broker offers: its ApiVersions answer, asked over a plain socket.

librdkafka asks every broker for its API versions but does not hand the answer to Python, so
this asks itself: one ApiVersions v0 request (no body; every broker answers v0, the version
clients negotiate with), the answer's ``(api_key, min, max)`` list. The one question that
matters here is whether the broker offers ConsumerGroupHeartbeat (API key 68), which KIP-848's
``consumer`` group protocol needs: Kafka 4.0 and later offer it; 3.7-3.9 only when enabled as
early access. ApiVersions may be asked before a SASL login, so SASL listeners answer too;
TLS listeners are asked over TLS with the configured CA and client certificate.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass

from dyno_stream.config import KafkaSettings
from dyno_stream.core.errors import KafkaServiceError

API_VERSIONS = 18
CONSUMER_GROUP_HEARTBEAT = 68
_CORRELATION = 0x44594E4F  # any number: the answer echoes it


@dataclass(frozen=True)
class BrokerApis:
    """One broker's answer: its address and each API key's (min, max) version."""

    address: str
    versions: dict[int, tuple[int, int]]

    @property
    def kip848(self) -> bool:
        """Whether it offers KIP-848's group protocol (ConsumerGroupHeartbeat)."""
        return CONSUMER_GROUP_HEARTBEAT in self.versions

    def describe(self) -> str:
        hb = self.versions.get(CONSUMER_GROUP_HEARTBEAT)
        offers = (
            f"offers ConsumerGroupHeartbeat v{hb[0]}-v{hb[1]} (KIP-848: Kafka 4.0+)"
            if hb is not None
            else "does not offer ConsumerGroupHeartbeat (KIP-848): Kafka before 4.0, or the "
            "consumer protocol disabled"
        )
        return f"{self.address}: {len(self.versions)} APIs, {offers}"


def _request(client_id: str) -> bytes:
    cid = client_id.encode()
    body = struct.pack(">hhih", API_VERSIONS, 0, _CORRELATION, len(cid)) + cid
    return struct.pack(">i", len(body)) + body


def parse_response(data: bytes) -> dict[int, tuple[int, int]]:
    """The (api_key -> (min, max)) of an ApiVersions v0 response body (after its size)."""
    correlation, error, count = struct.unpack_from(">ihi", data, 0)
    if correlation != _CORRELATION:
        raise ValueError(f"an answer to another request (correlation id {correlation})")
    if error != 0:
        raise ValueError(f"ApiVersions error code {error}")
    out: dict[int, tuple[int, int]] = {}
    for i in range(count):
        key, lo, hi = struct.unpack_from(">hhh", data, 10 + 6 * i)
        out[key] = (lo, hi)
    return out


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        chunks += chunk
    return bytes(chunks)


def _tls(kafka: KafkaSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=kafka.ssl_ca_location)
    if kafka.ssl_certificate_location and kafka.ssl_key_location:
        password = kafka.ssl_key_password
        ctx.load_cert_chain(
            kafka.ssl_certificate_location,
            kafka.ssl_key_location,
            None if password is None else password.get_secret_value(),
        )
    return ctx


def broker_apis(kafka: KafkaSettings, timeout: float = 5.0) -> BrokerApis:
    """Ask the first bootstrap server that answers for its API versions."""
    problems = []
    for address in kafka.bootstrap_servers.split(","):
        address = address.strip()
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout) as raw:
                sock: socket.socket = raw
                if kafka.security_protocol in ("SSL", "SASL_SSL"):
                    sock = _tls(kafka).wrap_socket(raw, server_hostname=host.strip("[]"))
                sock.sendall(_request(kafka.client_id))
                (size,) = struct.unpack(">i", _read_exactly(sock, 4))
                return BrokerApis(address, parse_response(_read_exactly(sock, size)))
        except (OSError, ValueError, struct.error) as exc:
            problems.append(f"{address}: {exc}")
    raise KafkaServiceError("no bootstrap server answered ApiVersions: " + "; ".join(problems))
