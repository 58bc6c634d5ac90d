"""Transport security and caller authentication for the gRPC port.

Three independent switches, all off by default (plaintext, no auth), as the CLI flags set them:

* TLS: ``--tls-cert`` + ``--tls-key`` (PEM) serve the port over TLS.
* mTLS: ``--tls-client-ca`` additionally *requires* a client certificate signed by that CA; the TLS
  handshake refuses anything else, so no RPC handler ever sees an unverified peer.
* Bearer tokens: ``--auth-token-file`` (one token per line, ``#`` comments and blank lines ignored).
  Every RPC except ``grpc.health.v1`` and server reflection must carry metadata
  ``authorization: Bearer <token>``; otherwise it ends UNAUTHENTICATED with a message saying what to send.
  Kubernetes probes and grpcurl therefore keep working without the secret.

The token check and the always-on malformed-body mapping are interceptors
(``camserve.front.interceptors``). Secrets never reach logs: ``SecurityConfig``'s repr and
``describe()`` show only counts and paths.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

__all__ = [
    "SecurityConfig",
    "SecurityConfigError",
    "add_listening_port",
    "load_tokens",
    "security_config_from_args",
    "server_credentials",
]

log = logging.getLogger(__name__)

class SecurityConfigError(ValueError):
    """A security flag is inconsistent or names a file that cannot be used (a caller/operator error)."""


@dataclass(frozen=True)
class SecurityConfig:
    """What the gRPC port needs: TLS material (paths) and the accepted bearer tokens.

    ``auth_tokens`` is hidden from ``repr`` so that logging the config (Triton-style start-up line)
    cannot leak a secret.
    """

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        """Reject combinations that would silently serve less securely than asked."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SecurityConfigError(
                "TLS needs both --tls-cert and --tls-key (PEM files); only one of them was given"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SecurityConfigError(
                "--tls-client-ca (mutual TLS) needs the server's own --tls-cert and --tls-key too"
            )
        if any((not t) or t != t.strip() or any(c.isspace() for c in t) for t in self.auth_tokens):
            raise SecurityConfigError("auth tokens must be non-empty and contain no whitespace")

    @property
    def tls(self) -> bool:
        """True when the port serves TLS."""
        return self.tls_cert is not None

    @property
    def mtls(self) -> bool:
        """True when clients must present a certificate signed by ``tls_client_ca``."""
        return self.tls_client_ca is not None

    @property
    def auth(self) -> bool:
        """True when RPCs (other than health/reflection) need a bearer token."""
        return bool(self.auth_tokens)

    def describe(self) -> str:
        """One log-safe line for the start-up configuration: modes and counts, never a secret."""
        transport = "mtls" if self.mtls else ("tls" if self.tls else "plaintext")
        parts = [f"transport={transport}"]
        if self.tls:
            parts.append(f"cert={self.tls_cert}")
        if self.mtls:
            parts.append(f"client_ca={self.tls_client_ca}")
        parts.append(f"auth={'bearer(' + str(len(self.auth_tokens)) + ' tokens)' if self.auth else 'off'}")
        return " ".join(parts)


def _readable_file(path: str | os.PathLike[str] | None, flag: str) -> Path | None:
    """Resolve a flag's path and fail early, naming the flag, if the file is missing or unreadable."""
    if path is None or str(path) == "":
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise SecurityConfigError(f"{flag}: no such file: {p}")
    try:
        with p.open("rb") as f:
            head = f.read(1)
    except OSError as e:
        raise SecurityConfigError(f"{flag}: cannot read {p}: {e.strerror or e}") from None
    if not head:
        raise SecurityConfigError(f"{flag}: file is empty: {p}")
    return p


def load_tokens(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Read accepted tokens: one per line, whitespace stripped, blank lines and '#' comments skipped."""
    p = _readable_file(path, "--auth-token-file")
    assert p is not None
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SecurityConfigError(f"--auth-token-file: {p} is not UTF-8 text") from None
    tokens: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if any(c.isspace() for c in line):
            # Never echo the line: it may be a secret with a stray space.
            raise SecurityConfigError(
                f"--auth-token-file: line {lineno} of {p} contains whitespace inside the token"
            )
        tokens.append(line)
    if not tokens:
        raise SecurityConfigError(f"--auth-token-file: {p} holds no token (one per line expected)")
    return tuple(dict.fromkeys(tokens))


def security_config_from_args(args: argparse.Namespace) -> SecurityConfig:
    """Build and validate the config from parsed flags; raises SecurityConfigError with a clear message.

    The CLI should turn the error into ``parser.error(str(e))`` (exit 2, no traceback).
    """
    cert = _readable_file(getattr(args, "tls_cert", None), "--tls-cert")
    key = _readable_file(getattr(args, "tls_key", None), "--tls-key")
    client_ca = _readable_file(getattr(args, "tls_client_ca", None), "--tls-client-ca")
    token_file = getattr(args, "auth_token_file", None)
    tokens = load_tokens(token_file) if token_file else ()
    return SecurityConfig(tls_cert=cert, tls_key=key, tls_client_ca=client_ca, auth_tokens=tokens)


def server_credentials(cfg: SecurityConfig) -> grpc.ServerCredentials | None:
    """TLS (or mTLS when a client CA is set) credentials for ``cfg``; None for plaintext."""
    if not cfg.tls:
        return None
    assert cfg.tls_cert is not None and cfg.tls_key is not None
    try:
        cert = cfg.tls_cert.read_bytes()
        key = cfg.tls_key.read_bytes()
        client_ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca is not None else None
    except OSError as e:
        raise SecurityConfigError(f"cannot read TLS material: {e}") from None
    for name, blob in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if blob is not None and b"-----BEGIN" not in blob:
            raise SecurityConfigError(f"{name}: not a PEM file (no '-----BEGIN' line)")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def add_listening_port(server: grpc.aio.Server, address: str, cfg: SecurityConfig) -> int:
    """Bind ``address`` (e.g. ``[::]:50051``; port 0 picks a free one) securely per ``cfg``; return the port.

    Raises OSError naming the address when it cannot be bound, instead of grpc's bare RuntimeError/0.
    """
    creds = server_credentials(cfg)
    try:
        if creds is not None:
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise OSError(f"cannot listen on {address}: {e}") from None
    if not port:
        raise OSError(f"cannot listen on {address} (address in use or invalid?)")
    log.info("gRPC listening on %s (%s)", address.rsplit(":", 1)[0] + f":{port}", cfg.describe())
    return port
