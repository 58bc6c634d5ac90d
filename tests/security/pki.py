"""Throw-away test PKI made with the ``openssl`` command line (``cryptography`` is not in the venv).

Two independent CAs so that tests can show a certificate from the *wrong* CA is refused: ``ca`` signs
the server and the good client; ``rogue`` signs a client the server must reject. EC P-256 keys keep
generation to a few tens of milliseconds.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    """Paths of the generated PEM files."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca_cert: Path
    rogue_client_cert: Path
    rogue_client_key: Path

    def read(self, name: str) -> bytes:
        """The bytes of one PEM file by attribute name."""
        return Path(getattr(self, name)).read_bytes()


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:  # pragma: no cover - the machines have it; say so clearly if not
        raise RuntimeError("the 'openssl' command is needed to make test certificates")
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=camserve-test-{name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )


def _leaf(d: Path, name: str, ca: str, cn: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d,
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d,
    )


def make_pki(directory: Path) -> Pki:
    """Create CA, server (SAN localhost/127.0.0.1), client and rogue-CA client certs in ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "ca")
    _ca(d, "rogue")
    _leaf(d, "server", "ca", "localhost",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
          "basicConstraints=CA:FALSE\n")
    _leaf(d, "client", "ca", "camserve-test-client",
          "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    _leaf(d, "rogueclient", "rogue", "camserve-rogue-client",
          "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    return Pki(
        ca_cert=d / "ca.crt", server_cert=d / "server.crt", server_key=d / "server.key",
        client_cert=d / "client.crt", client_key=d / "client.key", rogue_ca_cert=d / "rogue.crt",
        rogue_client_cert=d / "rogueclient.crt", rogue_client_key=d / "rogueclient.key",
    )
