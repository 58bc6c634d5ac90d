"""What scheduling reports as it works: the metrics hooks (implemented by ``camserve.front.metrics``).

Scheduling knows no Prometheus; it calls these methods on the event loop and the front's metrics
object records them. :class:`NullObserver` records nothing (the default, and what tests use).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NullObserver", "Observer"]


class Observer(Protocol):
    """Metrics hooks, called on the event loop."""

    def batch_formed(self, model: str, size: int) -> None: ...
    def queue_depth(self, model: str, depth: int) -> None: ...
    def workers_alive(self, n: int) -> None: ...
    def worker_restarted(self) -> None: ...
    def request_dropped(self, model: str, reason: str) -> None: ...
    def model_ready(self, model: str, ready: bool) -> None: ...


class NullObserver:
    """Observer that records nothing (the default)."""

    def batch_formed(self, model: str, size: int) -> None:
        pass

    def queue_depth(self, model: str, depth: int) -> None:
        pass

    def workers_alive(self, n: int) -> None:
        pass

    def worker_restarted(self) -> None:
        pass

    def request_dropped(self, model: str, reason: str) -> None:
        pass

    def model_ready(self, model: str, ready: bool) -> None:
        pass
