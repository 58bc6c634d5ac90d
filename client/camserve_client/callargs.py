"""What a call carries, checked before gRPC sees it: its deadline and its metadata.

gRPC Python turns both mistakes into a failed call with nothing to act on: a deadline past its clock's
range ends the call at once, DEADLINE_EXCEEDED; metadata HTTP/2 cannot carry ends it INTERNAL "Invalid
metadata". The clients check both when they are made (ValueError naming the entry) or as a call starts.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

__all__ = ["MAX_TIMEOUT_S", "call_timeout", "checked_metadata"]

#: The longest deadline a call is given, in seconds (about 31.7 years). gRPC Python overflows its clock
#: on longer ones and ends the call at once, DEADLINE_EXCEEDED "Deadline Exceeded", without sending it
#: (grpcio 1.85: a timeout of 3e9 s works, 1e10 s or ``float("inf")`` fails at once); a timeout
#: longer than this, infinite included, is no deadline, which is what it means.
MAX_TIMEOUT_S = 1e9


def call_timeout(seconds: float | None) -> float | None:
    """``seconds`` as gRPC's ``timeout=``: None (no deadline) for None, <= 0, infinity and anything past
    :data:`MAX_TIMEOUT_S`; ValueError for NaN or a value that is not a number."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or math.isnan(seconds):
        raise ValueError(f"timeout must be a number of seconds (or None for no deadline); got {seconds!r}")
    return None if seconds <= 0 or seconds > MAX_TIMEOUT_S else float(seconds)


_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def _refused_character(value: str | bytes) -> tuple[int, str] | None:
    """(index, repr) of the first character of a text metadata value HTTP/2 refuses, else None."""
    for i, ch in enumerate(value.decode("latin-1") if isinstance(value, bytes) else value):
        if not " " <= ch <= "~":
            return i, repr(ch)
    return None


def checked_metadata(metadata: Sequence[tuple[str, str | bytes]],
                     token: str | None = None) -> tuple[tuple[str, str | bytes], ...]:
    """``metadata`` (and ``token`` as ``authorization: Bearer <token>``, surrounding whitespace removed,
    as the server removes it) as gRPC will send them; ValueError naming the entry gRPC would refuse.

    gRPC Python refuses such metadata only when a call starts, as INTERNAL "Invalid metadata" with the
    reason in its C core's log (grpc/grpc#3042): keys are lowercase letters, digits, ``-``, ``_`` and
    ``.`` (HTTP/2 header names, RFC 9113 8.2.1); values printable ASCII, except under a key ending in
    ``-bin`` (binary, sent base64-encoded). A token read from a file with its newline was refused so."""
    entries = list(metadata)
    for key, value in entries:
        if not isinstance(key, str) or not key or not set(key) <= _KEY_CHARS:
            raise ValueError(f"metadata key {key!r} is not a gRPC metadata key: use lowercase letters, "
                             "digits, '-', '_' and '.' (HTTP/2 header names are lowercase)")
        if not isinstance(value, str | bytes):
            raise ValueError(f"metadata {key!r} has a {type(value).__name__} value: send a str (bytes under "
                             "a key ending in '-bin')")
        bad = None if key.endswith("-bin") else _refused_character(value)
        if bad is not None:
            raise ValueError(f"metadata {key!r} holds {bad[1]} at {bad[0]}: a metadata value is printable "
                             "ASCII (binary data goes under a key ending in '-bin')")
    token = (token or "").strip()  # empty: no token, as before
    if token:
        bad = _refused_character(token)
        if bad is not None:
            raise ValueError(f"the token holds {bad[1]} at {bad[0]}: a bearer token is printable ASCII")
        entries.append(("authorization", f"Bearer {token}"))
    return tuple(entries)
