"""Calls made with KServe's Python SDK (``kserve.InferenceGRPCClient``), run in its own environment
(.venv/kserve, made by `make kserve-client`): the tests write a plan of calls as JSON and read back what
the SDK got. It imports nothing of camserve, so it sees the server exactly as a KServe user does.

    python kserve_calls.py PLAN.json OUT.json

A plan: {"target": "host:port", "headers": {name: value}, "calls": [{"op": ..., ...}, ...]}: the
headers (gRPC metadata, e.g. a bearer token) go with every call as the SDK's ``headers=``; a call's own
"headers" replace them. Each result is {"ok": true, "value":
...} or {"ok": false, "code": "INVALID_ARGUMENT", "message": ...}. Ops: live, ready, model_ready
({"model"}), infer ({"model", "inputs", "parameters", "outputs", "version", "id"}). An input is
{"name", "datatype", "data", "shape"?, "binary"?}: BYTES data are base64 strings; ``binary`` false sends
typed contents (the SDK's list form) instead of set_data_from_numpy's raw form. Outputs come back as
{"datatype", "shape", "data", "dtype"} (BYTES as base64), reply parameters as {name: value}, None for
a value the SDK's protocol cannot read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.infer_type import RequestedOutput


def _input(spec: dict[str, Any]) -> InferInput:
    if spec["datatype"] == "BYTES":
        value = np.array([base64.b64decode(x) for x in spec["data"]], dtype=np.object_)
        value = value.reshape(spec.get("shape", [len(value), 1]))
    else:
        value = np.array(spec["data"], dtype=np.uint8)
        value = value.reshape(spec.get("shape", value.shape))
    tensor = InferInput(spec["name"], list(value.shape), spec["datatype"])
    if spec.get("binary", True):
        tensor.set_data_from_numpy(value)
    else:
        tensor.data = value.reshape(-1).tolist()
    return tensor


def _output(out: Any) -> dict[str, Any]:
    array = out.as_numpy()
    if out.datatype == "BYTES":
        data: Any = [base64.b64encode(bytes(x)).decode() for x in array.reshape(-1)]
    else:
        data = array.tolist()
    return {"datatype": out.datatype, "shape": list(out.shape), "data": data, "dtype": str(array.dtype)}


def _parameter(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


async def _call(client: InferenceGRPCClient, call: dict[str, Any], headers: dict[str, str]) -> Any:
    op = call["op"]
    metadata = tuple(call.get("headers", headers).items())
    if op == "live":
        return await client.is_server_live(headers=metadata)
    if op == "ready":
        return await client.is_server_ready(headers=metadata)
    if op == "model_ready":
        return await client.is_model_ready(call["model"], headers=metadata)
    if op == "infer":
        outputs = [RequestedOutput(o["name"], o.get("parameters")) for o in call.get("outputs", [])]
        request = InferRequest(call.get("model", "demo"), [_input(s) for s in call["inputs"]],
                               request_id=call.get("id"), parameters=call.get("parameters"),
                               request_outputs=outputs or None, model_version=call.get("version"))
        response = await client.infer(request, headers=metadata)
        return {"id": response.id, "model_name": response.model_name,
                "outputs": {o.name: _output(o) for o in response.outputs},
                "parameters": {k: _parameter(v) for k, v in (response.parameters or {}).items()}}
    raise ValueError(f"unknown op {op!r}")


async def run(plan: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    async with InferenceGRPCClient(plan["target"], timeout=120, retries=0) as client:
        for call in plan["calls"]:
            try:
                results.append({"ok": True, "value": await _call(client, call, plan.get("headers", {}))})
            except grpc.RpcError as exc:
                results.append({"ok": False, "code": exc.code().name, "message": exc.details()})
    return results


if __name__ == "__main__":
    plan_path, out_path = sys.argv[1:3]
    with open(plan_path) as f:
        plan = json.load(f)
    with open(out_path, "w") as f:
        json.dump(asyncio.run(run(plan)), f)
