"""``raises_kind``: pytest.raises for a camserve Failure of one ErrorKind (any room may use it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from camserve.records import ErrorKind, Failure


@contextmanager
def raises_kind(kind: ErrorKind, match: str | None = None) -> Iterator[Any]:
    """Expect a :class:`Failure` of ``kind`` whose message matches ``match`` (a regex, optional)."""
    with pytest.raises(Failure, match=match) as info:
        yield info
    assert info.value.kind is kind, f"expected {kind}, got {info.value.kind}: {info.value}"
