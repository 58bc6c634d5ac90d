"""What every client command shares: the connection flags, exit statuses and error lines.

Used by `camserve` (:mod:`.cli`), `camserve explain` (:mod:`.explaincmd`) and `camserve bench`
(:mod:`.benchcmd`).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3
EXIT_CODES = ("exit status: 0 success; 1 a call failed (the message says why); 2 bad usage, or an input "
              "or output file that cannot be used; 3 the server could not be reached, was not serving, "
              "or did not answer within --timeout")


def error_line(exc: Exception, args: argparse.Namespace) -> str:
    """A failed call in the command line's words: the SDK's message plus the flag that fixes it."""
    text = str(exc)
    code = getattr(getattr(exc, "code", None), "name", "")
    if getattr(exc, "unreachable", False):
        text += f" [server address: --target or CAMSERVE_TARGET, now {args.target}]"
    elif code == "UNAUTHENTICATED":
        text += " [the server wants a bearer token: --token, --token-file or CAMSERVE_TOKEN]"
    return text


def exit_status(exc: Exception) -> int:
    """EXIT_UNAVAILABLE for a server not reached, not serving or too slow; EXIT_FAILED otherwise."""
    code = getattr(getattr(exc, "code", None), "name", "")
    return EXIT_UNAVAILABLE if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else EXIT_FAILED


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every client command (also used by `camserve bench`)."""
    g = parser.add_argument_group("connection")
    g.add_argument("--target", default=os.environ.get("CAMSERVE_TARGET", "localhost:50051"),
                   help="server address host:port, a comma-separated list (round-robin), or dns:///host:port "
                        "(env CAMSERVE_TARGET; default %(default)s)")
    g.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="deadline per call in seconds; a call waits this long for a server it cannot reach "
                        "yet unless --retries 0 (default 60)")
    g.add_argument("--retries", type=int, default=4, choices=range(5), metavar="{0..4}",
                   help="retries on UNAVAILABLE / RESOURCE_EXHAUSTED within the deadline, by gRPC's retry "
                        "policy; with 0 a call to an unreachable server fails at once (default 4)")
    g.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca)")
    g.add_argument("--ca", metavar="PEM", help="CA certificate that signed the server's certificate "
                   "(implies --tls)")
    g.add_argument("--cert", metavar="PEM",
                   help="client certificate for mutual TLS (implies --tls; needs --key)")
    g.add_argument("--key", metavar="PEM", help="client private key for mutual TLS")
    g.add_argument("--server-name", metavar="NAME", help="name to verify in the server certificate when the "
                   "target is an address or another name (TLS)")
    g.add_argument("--token", default=os.environ.get("CAMSERVE_TOKEN"),
                   help="bearer token sent as 'authorization: Bearer <token>' (env CAMSERVE_TOKEN)")
    g.add_argument("--token-file", metavar="FILE", help="read the bearer token from this file")


def client_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Client(...) keyword arguments from the connection flags."""
    from camserve_client.client import TLSConfig

    token = args.token
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read token file {args.token_file}: {exc.strerror}") from None
    tls: TLSConfig | bool = False
    if args.tls or args.ca or args.cert or args.server_name:
        if bool(args.cert) != bool(args.key):
            raise UsageError("mutual TLS needs both --cert and --key")
        tls = TLSConfig(root_certificates=args.ca, certificate_chain=args.cert, private_key=args.key,
                        server_name=args.server_name)
    return {"timeout": args.timeout, "retries": args.retries, "tls": tls, "token": token}


class UsageError(Exception):
    """Bad flags or input files: exit 2 with the message."""


#: Seconds a command waits for an answer before it checks whether the server is reachable at all.
NOTICE_AFTER_S = 3.0


@contextmanager
def unreachable_notice(client: Any, args: argparse.Namespace) -> Iterator[None]:
    """While the block runs: if no answer came within NOTICE_AFTER_S and no server can be reached,
    say so once on stderr, with the fix, instead of waiting out --timeout in silence (calls wait for
    a server that is not there yet: gRPC's waitForReady)."""
    done = threading.Event()

    def watch() -> None:
        if done.wait(NOTICE_AFTER_S):
            return
        why = client.connection_error()
        if why and not done.is_set():
            print(f"camserve {args.command}: no answer yet, still waiting (Ctrl-C stops): {why} "
                  f"[server address: --target or CAMSERVE_TARGET, now {args.target}]", file=sys.stderr)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
