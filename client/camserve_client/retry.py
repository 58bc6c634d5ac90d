"""How gRPC retries a camserve call: the service config the SDK gives every channel.

The SDK does not retry by itself; gRPC does, within each call's deadline, by the ``retryPolicy``,
``waitForReady`` and ``retryThrottling`` a :class:`RetryPolicy` writes into the channel's service
config (gRPC's A6 retry design). The server steers it with ``grpc-retry-pushback-ms``: ``-1`` on
refusals no retry can fix, and on NOT_READY a delay that spreads the remaining attempts over the
time the deadline leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from camserve_proto import explain_pb2 as pb

__all__ = ["MAX_ATTEMPTS", "SERVICE", "RetryPolicy"]

SERVICE = pb.DESCRIPTOR.services_by_name["ExplainService"].full_name
#: gRPC makes at most this many attempts of one call, whatever a retry policy asks for.
MAX_ATTEMPTS = 5


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


@dataclass(frozen=True)
class RetryPolicy:
    """How gRPC retries a camserve.v1.ExplainService call (health checks are never retried).

    * ``max_attempts`` (1..5, gRPC's cap): attempts per call, the first included; 1 = never retry.
    * Between attempts gRPC waits a random time up to ``initial_backoff_s * multiplier**n`` (at most
      ``max_backoff_s``), unless the server says how long (``grpc-retry-pushback-ms``); never past
      the call's deadline.
    * ``retry_on``: the status codes retried. A RESOURCE_EXHAUSTED the server marks as permanent
      (a request or reply too large) is not. CANCELLED is retried only when the server sent it (gRPC
      never retries a call its caller cancelled): gRPC's core cancels a call it received but had not
      yet handed to the server's handler when a draining server stops (grpc/grpc#41785); an
      explanation is idempotent, so asking again (on another replica) is safe.
    * ``wait_for_ready``: while the server cannot be reached at all (restarting, not yet listening),
      a call waits for it until its deadline instead of failing at once, spending no attempt.
    * The retry budget (``budget_tokens``, ``budget_ratio``; gRPC's ``retryThrottling``), per
      client: every failed attempt costs one token, every success returns ``budget_ratio``; while
      no more than half the tokens are left, failures are not retried. With the defaults a burst of
      100 failed attempts is retried, then about one retry per ten successful calls, so a server that
      keeps failing sees no retry storm.
    """

    max_attempts: int = MAX_ATTEMPTS
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    retry_on: tuple[str, ...] = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED")
    wait_for_ready: bool = True
    budget_tokens: int = 200
    budget_ratio: float = 0.1

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(f"max_attempts must be 1..{MAX_ATTEMPTS} (gRPC makes at most {MAX_ATTEMPTS} "
                             "attempts of a call)")
        if self.initial_backoff_s <= 0 or self.max_backoff_s <= 0 or self.multiplier < 1:
            raise ValueError("back-off must be > 0 and multiplier >= 1")
        if not 0 < self.budget_tokens <= 1000 or self.budget_ratio <= 0:
            raise ValueError("budget_tokens must be 1..1000 and budget_ratio > 0")
        unknown = [c for c in self.retry_on if c not in grpc.StatusCode.__members__]
        if unknown:
            raise ValueError(f"unknown status codes {unknown}")

    @classmethod
    def coerce(cls, retries: int | RetryPolicy | None) -> RetryPolicy:
        """An int is the number of retries after the first attempt (0..4); None or 0 means none, and
        then a call to a server that cannot be reached fails at once instead of waiting for it."""
        if isinstance(retries, RetryPolicy):
            return retries
        n = max(0, int(retries or 0))
        if n >= MAX_ATTEMPTS:
            raise ValueError(f"retries must be 0..{MAX_ATTEMPTS - 1} (gRPC makes at most {MAX_ATTEMPTS} "
                             "attempts of a call)")
        return cls(max_attempts=1 + n, wait_for_ready=n > 0)

    def service_config(self, load_balancing: str | None = None) -> dict[str, Any]:
        """The gRPC service config (as a dict) that makes a channel follow this policy; with a
        ``load_balancing`` policy (several servers), also client-side health checking, so a server
        that reports NOT_SERVING (warming up, draining) gets no new calls while others serve."""
        method: dict[str, Any] = {"name": [{"service": SERVICE}], "waitForReady": self.wait_for_ready}
        config: dict[str, Any] = {"methodConfig": [method]}
        if self.max_attempts > 1:
            method["retryPolicy"] = {
                "maxAttempts": self.max_attempts,
                "initialBackoff": _duration(self.initial_backoff_s),
                "maxBackoff": _duration(self.max_backoff_s),
                "backoffMultiplier": self.multiplier,
                "retryableStatusCodes": list(self.retry_on),
            }
            config["retryThrottling"] = {"maxTokens": self.budget_tokens, "tokenRatio": self.budget_ratio}
        if load_balancing:
            config["loadBalancingConfig"] = [{load_balancing: {}}]
            config["healthCheckConfig"] = {"serviceName": ""}
        return config
