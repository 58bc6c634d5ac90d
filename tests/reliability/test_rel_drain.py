"""SIGTERM under load during a simulated rolling update: zero accepted calls lost.

Two replicas: A (started here, ``--pre-stop-seconds 2``) and B (the session's shared server). Two
clients run open-loop load at once:

* the fleet client: one channel over both targets (``ipv4:A,B``), round_robin, client-side health
  checking (``healthCheckConfig``) and a retry policy on UNAVAILABLE, as the README recommends for
  Kubernetes; every one of its calls must end OK;
* the direct client: a plain channel to A alone, no retry policy. Calls it sent before A stopped
  accepting (SIGTERM + pre-stop window) must all end OK; later ones may be refused UNAVAILABLE; no
  other code (a DEADLINE_EXCEEDED, CANCELLED or reset stream would be an accepted call lost).

A goes NOT_SERVING at once on SIGTERM and exits 0 within pre-stop + drain. With CAMSERVE_SOAK=1 a
replacement A' is started on A's port and must win traffic back (the second half of a rolling update).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from relkit import SOAK, LoadResult, encode, open_loop, photo, report, valid_request
from relserver import MODEL, RunningServer, start_server

pytestmark = pytest.mark.timeout(600 if SOAK else 240)

PRE_STOP_S = 2.0
DRAIN_S = 10.0
FLEET_RPS = 16.0
DIRECT_RPS = 8.0
DEADLINE_S = 5.0
LOAD_S = 20.0 if SOAK else 8.0
TERM_AT_S = 2.0

SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [{
        "name": [{"service": "camserve.v1.ExplainService"}],
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
})


REQUEST = valid_request(encode(photo(192, seed=2), ".jpg"), model=MODEL)


async def _load(target: str, rate: float, options: list[tuple[str, Any]]) -> LoadResult:
    return await open_loop(target, lambda i: REQUEST, rate, LOAD_S, DEADLINE_S, channels=1, options=options)


async def _scenario(a: RunningServer, b: RunningServer) -> dict[str, Any]:
    fleet_target = f"ipv4:127.0.0.1:{a.grpc_port},127.0.0.1:{b.grpc_port}"
    fleet = asyncio.create_task(_load(fleet_target, FLEET_RPS, [("grpc.service_config", SERVICE_CONFIG),
                                                                ("grpc.enable_retries", 1)]))
    direct = asyncio.create_task(_load(a.target, DIRECT_RPS, []))
    await asyncio.sleep(TERM_AT_S)
    a_served_before = a.metric("camserve_requests_total", code="OK")
    t_term = time.perf_counter()
    a.send_signal()
    health_after_term = None
    for _ in range(20):  # NOT_SERVING must show at once
        await asyncio.sleep(0.05)
        health_after_term = await asyncio.to_thread(a.health, "", 1.0)
        if health_after_term == "NOT_SERVING":
            break
    t_not_serving = time.perf_counter() - t_term
    exit_code = await asyncio.to_thread(a.wait, PRE_STOP_S + DRAIN_S + 30)
    t_exit = time.perf_counter() - t_term
    fleet_res, direct_res = await fleet, await direct
    return {"fleet": fleet_res, "direct": direct_res, "t_term": t_term, "exit_code": exit_code,
            "exit_after_term_s": round(t_exit, 2), "health_after_term": health_after_term,
            "not_serving_after_s": round(t_not_serving, 2), "a_served_ok_before_term": a_served_before}


def test_sigterm_during_rolling_update_loses_nothing(shared_server: RunningServer) -> None:
    b = shared_server
    frontends = getattr(b, "frontends", 1)  # A drains with as many front ends as B has
    args = ["--drain-seconds", str(DRAIN_S)]
    b_before = b.metric("camserve_requests_total", code="OK")
    with start_server("drain-A", args, pre_stop_seconds=PRE_STOP_S, frontends=frontends) as a:
        a_port = a.grpc_port
        out = asyncio.run(_scenario(a, b))
    fleet: LoadResult = out.pop("fleet")
    direct: LoadResult = out.pop("direct")
    t_term = out.pop("t_term")  # absolute perf_counter time of the SIGTERM
    out["sigterm_at_s"] = round(t_term - direct.t0, 2)
    accepted_until = t_term + PRE_STOP_S  # A accepts new calls until here
    direct_before = [r for r in direct.records if direct.t0 + r.sent_s + 0.05 < accepted_until]
    direct_after = [r for r in direct.records if direct.t0 + r.sent_s >= accepted_until + 0.5]
    fig = {
        **out,
        "server_flags": f"--pre-stop-seconds {PRE_STOP_S} --frontends {frontends} " + " ".join(args),
        "fleet": fleet.summary(),
        "direct": direct.summary(),
        "direct_sent_while_accepting": len(direct_before),
        "direct_lost_while_accepting": sum(r.code != "OK" for r in direct_before),
        "direct_after_stop_codes": sorted({r.code for r in direct_after}),
        "b_served_ok_during_test": b.metric("camserve_requests_total", code="OK") - b_before,
    }
    if SOAK:  # second half of a rolling update: a replacement on A's port wins traffic back
        with start_server("drain-A2", [], grpc_port=a_port, frontends=frontends) as a2:
            res = asyncio.run(_load(f"ipv4:127.0.0.1:{a_port},127.0.0.1:{b.grpc_port}", FLEET_RPS,
                                    [("grpc.service_config", SERVICE_CONFIG)]))
            fig["replacement"] = {"load": res.summary(),
                                  "served_ok": a2.metric("camserve_requests_total", code="OK")}
            assert set(res.codes()) == {"OK"} and fig["replacement"]["served_ok"] > 0
    report(f"drain_frontends{frontends}", fig)
    assert out["exit_code"] == 0
    assert out["health_after_term"] == "NOT_SERVING" and out["not_serving_after_s"] < 1.0
    assert out["exit_after_term_s"] < PRE_STOP_S + DRAIN_S + 10
    # the fleet client: every call answered OK, none late
    assert set(fleet.codes()) == {"OK"}, fleet.codes()
    assert fleet.summary()["answered_after_deadline"] == 0
    # the direct client: nothing accepted was lost; afterwards only clean refusals
    assert direct_before and fig["direct_lost_while_accepting"] == 0, \
        [(round(r.sent_s, 2), r.code, r.details[:80]) for r in direct_before if r.code != "OK"][:5]
    assert set(direct.codes()) <= {"OK", "UNAVAILABLE"}, direct.codes()
    assert fig["b_served_ok_during_test"] > 0
    assert b.alive()
