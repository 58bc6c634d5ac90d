"""What a client dials (targets), and why it cannot reach its server, in words a caller can act on.

gRPC reports a connection it could not make as UNAVAILABLE with its core's text ("failed to connect
to all addresses; last error: ... Connection refused"), and a call that waited for the server
(``waitForReady``, the SDK's default) only as DEADLINE_EXCEEDED, "Deadline Exceeded", with no hint
that no server was ever reached. The client then asks the channel once more without waiting (a
health check, which needs no token) and reads the connection error from that answer; this module
turns it into the fix: start the server, fix the address, use TLS or not, give the CA.

The texts matched are grpcio's (pinned in pyproject.toml); a test per case (tests/client) fails when
an upgrade rewords them, and an unmatched error still comes back whole, only without the advice.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest
from grpc_health.v1.health_pb2_grpc import HealthStub

from camserve_client.errors import CamserveError, NotFound, error_from_rpc

__all__ = ["PROBE_TIMEOUT_S", "advice", "diagnosed", "health_not_found", "is_connection_failure", "probe",
           "probe_details", "resolve_targets", "worth_a_probe"]

#: How long the follow-up probe may take (only after a call already failed).
PROBE_TIMEOUT_S = 2.0

_CONNECT_FAILURES = ("failed to connect to all addresses", "errors resolving", "DNS resolution failed",
                     "no connection within")

# (pattern in gRPC's text, TLS used?, advice); None matches either. First match wins.
_RULES: list[tuple[str, bool | None, str]] = [
    ("WRONG_VERSION_NUMBER", True,
     "the server does not speak TLS: connect without TLS (no tls=..., no --tls/--ca)"),
    ("CERTIFICATE_VERIFY_FAILED", True,
     "the server's certificate is not signed by a CA this client trusts: give the CA that signed it "
     "(TLSConfig(root_certificates=...), --ca)"),
    ("not in peer certificate", True,
     "the server's certificate does not name the host dialled: dial a name it holds, or set it with "
     "TLSConfig(server_name=...) (--server-name)"),
    (r"Tls handshake failed|SSL_ERROR|handshake", True,
     "the TLS handshake failed: check the CA, and for mutual TLS the client certificate and key "
     "(TLSConfig(certificate_chain=..., private_key=...), --cert/--key)"),
    ("Socket closed|Connection reset", False,
     "the server closed the connection at once: it probably requires TLS: connect with TLS and its CA "
     "(tls=TLSConfig(root_certificates=...), --tls/--ca)"),
    ("Socket closed|Connection reset", True,
     "the server closed the connection during set-up: if it requires mutual TLS, give a client "
     "certificate and key (TLSConfig(certificate_chain=..., private_key=...), --cert/--key)"),
    (r"Failed parsing HTTP/2|http1\.x server", None,
     "that port answers HTTP/1, not gRPC (camserve's /metrics port?): use the gRPC port (50051 unless "
     "the server was started with --grpc-port)"),
    ("Connection refused", None,
     "nothing is listening there: start the server (`camserve serve`), or fix the address and port"),
    ("Domain name not found|lookup failed|Name or service not known|Misformatted domain", None,
     "the host name does not resolve: check the target's spelling (host:port)"),
    ("Network is unreachable|No route to host|timed out|Timeout occurred|no connection within", None,
     "the host cannot be reached from here (address, network or firewall)"),
]


def is_connection_failure(details: str) -> bool:
    """Whether an UNAVAILABLE's details say that no connection was made (not a server's refusal)."""
    return any(marker in details for marker in _CONNECT_FAILURES)


def advice(target: str, details: str, tls: bool) -> str:
    """The fix for a connection failure gRPC described as ``details`` ('' when none is known)."""
    for pattern, needs_tls, text in _RULES:
        if (needs_tls is None or needs_tls == tls) and re.search(pattern, details):
            if "Connection refused" in pattern and ":443:" in details and not _has_port(target):
                text += " (the target has no port, so gRPC dialled its default, 443)"
            return text
    return ""


def _has_port(target: str) -> bool:
    """Whether a host[:port] / scheme:host[:port] target names a port."""
    last = target.rsplit(",", 1)[-1].rsplit("/", 1)[-1]
    return bool(re.search(r":\d+$", last))


# Targets gRPC resolves itself (name resolver schemes): probed as they are.
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")
# A URL where gRPC wants host:port (gRPC's own schemes, dns: ipv4: ipv6: unix: ..., pass through).
_URL = re.compile(r"^(https?|grpcs?|tcp)://", re.IGNORECASE)


def _split_host_port(address: str) -> tuple[str, str]:
    if address.startswith("["):
        host, _, port = address[1:].partition("]:")
        return host, port
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"target {address!r} must be host:port")
    return host, port


def _bare_ipv6(address: str) -> None:
    """ValueError for an IPv6 address written without brackets (``::1:50051``, ``::1``): gRPC reads it as
    a host name that does not resolve, or as an address without a port (and dials 443)."""
    if address.startswith(("[", *_SCHEMES)) or address.count(":") < 2:
        return
    host, _, port = address.rpartition(":")
    readings = [f"[{host}]:{port}"] if port.isdigit() and _is_ipv6(host) else []
    if _is_ipv6(address):  # '::1', or '::1:2', which also reads as [::1]:2
        readings.append(f"[{address}]:PORT")
    if readings:
        raise ValueError(f"target {address!r} is an IPv6 address without brackets: write "
                         f"{' or '.join(readings)}")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def resolve_targets(target: str | Sequence[str]) -> tuple[str, bool]:
    """Return (gRPC target string, use round_robin).

    A list (or a comma-separated string) of host:port becomes one `ipv4:` / `ipv6:` target that
    gRPC balances over; a `dns:///name` target is balanced over its A/AAAA records.
    """
    for item in [target] if isinstance(target, str) else target:
        if _URL.match(item.strip()):
            raise ValueError(f"target {item!r} is a URL: give host:port (e.g. localhost:50051) or "
                             "dns:///host:port; TLS is tls=... (CLI --tls), not https://")
        for one in item.split(","):
            _bare_ipv6(one.strip())
    if isinstance(target, str):
        if "," not in target or ":///" in target or target.startswith(("ipv4:", "ipv6:")):
            return target, target.startswith(("dns:", "ipv4:", "ipv6:"))
        target = [t.strip() for t in target.split(",") if t.strip()]
    items = list(target)
    if not items:
        raise ValueError("no target given")
    if len(items) == 1:
        return resolve_targets(items[0])
    v4: list[str] = []
    v6: list[str] = []
    for item in items:
        host, port = _split_host_port(item)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise ValueError(f"cannot resolve {host!r}: {exc}") from None
            infos.sort(key=lambda info: info[0] != socket.AF_INET)  # prefer IPv4
            ip = ipaddress.ip_address(infos[0][4][0])
        (v4 if ip.version == 4 else v6).append(f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}")
    if v4 and v6:
        raise ValueError("a target list must be all IPv4 or all IPv6; use a dns:/// name for mixed")
    return ("ipv4:" + ",".join(v4)) if v4 else ("ipv6:" + ",".join(v6)), True


def worth_a_probe(err: CamserveError) -> bool:
    """A DEADLINE_EXCEEDED may be a call that waited for a server it never reached: ask once more."""
    return err.code == grpc.StatusCode.DEADLINE_EXCEEDED


def probe_details(exc: grpc.RpcError) -> str | None:
    """gRPC's connection error from a health check sent without waiting; None when a server answered."""
    err = error_from_rpc(exc)
    if err.code == grpc.StatusCode.UNAVAILABLE and is_connection_failure(err.details):
        return err.details
    if err.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (f"no connection within {PROBE_TIMEOUT_S:g} s to a health check either (or the server "
                "is stalled)")
    return None


def _check(target: str, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]],
           metadata: Sequence[tuple[str, str]]) -> str | None:
    """:func:`probe_details` of one health check on a fresh channel, sent without waiting."""
    channel = (grpc.secure_channel(target, credentials, options=options) if credentials is not None
               else grpc.insecure_channel(target, options=options))
    try:
        HealthStub(channel).Check(HealthCheckRequest(), timeout=PROBE_TIMEOUT_S, metadata=metadata)
    except grpc.RpcError as exc:
        return probe_details(exc)
    finally:
        channel.close()
    return None


def probe(target: str, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, Any]],
          metadata: Sequence[tuple[str, str]]) -> str | None:
    """Why ``target`` cannot be reached (gRPC's words), or None when a server answers a health check.

    gRPC reports only the last address it tried, and its resolver may find more than the system's:
    for ``localhost`` that may be ``[::1]``, refused, while the server on 127.0.0.1 refused the TLS
    handshake. So a refusal of a host name is asked again of each address the system resolves it
    to, and a refusal is reported only if each of those refused too.
    """
    details = _check(target, credentials, options, metadata)
    if not details or "Connection refused" not in details or target.startswith(_SCHEMES):
        return details
    try:
        host, port = _split_host_port(target)
        addresses = {info[4][0] for info in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)}
    except (ValueError, OSError):  # no port, an unknown name: gRPC's words are all there is
        return details
    pinned = [*options, ("grpc.ssl_target_name_override", host), ("grpc.default_authority", target)]
    for address in sorted(addresses):
        ip = ipaddress.ip_address(address)
        one = f"ipv4:{ip}:{port}" if ip.version == 4 else f"ipv6:[{ip}]:{port}"
        other = _check(one, credentials, pinned, metadata)
        if other is None or "Connection refused" not in other:
            return other or details
    return details


def diagnosed(err: CamserveError, probe: str | None, waited: float | None, target: str,
              tls: bool) -> CamserveError:
    """``err`` reworded when no connection was made (``probe``: :func:`probe_details` of a follow-up
    check, or None; ``waited``: the seconds the call waited): the target, the fix, gRPC's own words,
    and ``unreachable`` set. Any other error comes back as it is."""
    details = probe
    if err.code == grpc.StatusCode.UNAVAILABLE and is_connection_failure(err.details):
        details, waited = err.details, None
    if not details:
        return err
    fix = advice(target, details, tls)
    what = f"no connection to {target} in {waited:g} s" if waited else f"cannot connect to {target}"
    new = type(err)(f"{what}: {fix + ' ' if fix else ''}(gRPC: {details})", err.code)
    new.unreachable = True
    return new


def health_not_found(err: CamserveError, model: str | None) -> CamserveError:
    """The health service's NOT_FOUND carries no text; say what it means."""
    if isinstance(err, NotFound) and not err.details:
        return NotFound(f"model {model!r} is not served here (list_models() names those that are; CLI: "
                        "camserve models)")
    return err
