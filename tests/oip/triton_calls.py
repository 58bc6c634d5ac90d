"""Calls made with the stock tritonclient, run in its own environment (.venv/tritonclient, made by
`make tritonclient`): the tests in this folder write a plan of calls as JSON and read back what
tritonclient got. It imports nothing of camserve, so it sees the server exactly as a Triton user does.

    python triton_calls.py descriptors                  # the client's own protocol descriptors as JSON
    python triton_calls.py run PLAN.json OUT.json       # run a plan of calls

A plan: {"target": "host:port", "headers": {...}, "calls": [{"op": ..., ...}, ...]}. Each call's
result is {"ok": true, "value": ...} or {"ok": false, "code": "INVALID_ARGUMENT", "message": ...};
infer results carry every output as {"datatype", "shape", "data"} (numbers as nested lists, BYTES as
base64 strings), the response id and parameters (as plain values). Ops: live, ready, model_ready,
server_metadata, model_metadata, model_config, statistics, infer, async_infer (the same, through
async_infer's callback), aio_stream (the asyncio client's stream_infer: its code and message),
unimplemented (one call per protocol method camserve does not serve: its code and message).
"""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def descriptors() -> dict[str, Any]:
    """The client's own protocol descriptors (see oip_descriptors.describe)."""
    from oip_descriptors import describe
    from tritonclient.grpc import model_config_pb2, service_pb2

    return describe(service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR)


def _tensor(result: Any, name: str) -> dict[str, Any]:
    out = result.get_output(name)
    array = result.as_numpy(name)
    if out.datatype == "BYTES":
        data: Any = [base64.b64encode(bytes(x)).decode() for x in array.reshape(-1)]
    else:
        data = array.tolist()
    return {"datatype": out.datatype, "shape": list(out.shape), "data": data, "dtype": str(array.dtype)}


def _infer(client: Any, call: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    inputs = []
    for spec in call["inputs"]:  # {"name", "datatype", "data", optional "dtype" and "shape"}
        if spec["datatype"] == "BYTES":
            value = np.array([base64.b64decode(x) for x in spec["data"]], dtype=np.object_)
            value = value.reshape(spec.get("shape", [len(value), 1]))
        else:
            value = np.array(spec["data"], dtype=spec.get("dtype", "uint8"))
            value = value.reshape(spec.get("shape", value.shape))
        tensor = triton.InferInput(spec["name"], list(value.shape), spec["datatype"])
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(n) if isinstance(n, str)  # a name, or {"name", "class_count"}
               else triton.InferRequestedOutput(n["name"], class_count=n["class_count"])
               for n in call.get("outputs", [])] or None
    kwargs = {k: call[k] for k in ("priority", "timeout") if k in call}
    kwargs.update(model_version=call.get("version", ""), outputs=outputs, request_id=call.get("id", ""),
                  parameters=call.get("parameters"), headers=headers,
                  client_timeout=call.get("client_timeout", 120))
    if call["op"] == "infer":
        result = client.infer(call.get("model", "demo"), inputs, **kwargs)
    else:  # async_infer: the answer comes through the callback, on another thread
        answers: queue.Queue[Any] = queue.Queue()
        client.async_infer(call.get("model", "demo"), inputs,
                           lambda result, error: answers.put((result, error)), **kwargs)
        result, error = answers.get(timeout=kwargs["client_timeout"] + 30)
        if error is not None:
            raise error
    response = result.get_response()
    return {"id": response.id, "model_name": response.model_name, "model_version": response.model_version,
            "order": [o.name for o in response.outputs],
            "parameters": {k: getattr(v, v.WhichOneof("parameter_choice"))
                           for k, v in response.parameters.items()},
            "outputs": {o.name: _tensor(result, o.name) for o in response.outputs}}


def _unimplemented(client: Any, headers: dict[str, str]) -> dict[str, list[str]]:
    """Call every protocol method camserve does not serve; {method: [status code, message]}."""
    codes: dict[str, list[str]] = {}
    calls = {
        "RepositoryIndex": lambda: client.get_model_repository_index(headers=headers),
        "RepositoryModelLoad": lambda: client.load_model("demo", headers=headers),
        "RepositoryModelUnload": lambda: client.unload_model("demo", headers=headers),
        "SystemSharedMemoryStatus": lambda: client.get_system_shared_memory_status(headers=headers),
        "CudaSharedMemoryStatus": lambda: client.get_cuda_shared_memory_status(headers=headers),
        "TraceSetting": lambda: client.get_trace_settings(headers=headers),
        "LogSettings": lambda: client.get_log_settings(headers=headers),
    }
    for name, fn in calls.items():
        try:
            fn()
            codes[name] = ["OK", ""]
        except InferenceServerException as exc:
            codes[name] = [_code(exc), exc.message() or ""]
    # The bidirectional stream: its error arrives through the callback.
    errors: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: errors.put(error), headers=headers)
    tensor = triton.InferInput("PIXELS", [1, 1], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 1), np.uint8))
    with contextlib.suppress(InferenceServerException):  # the stream may have failed already
        client.async_stream_infer("demo", [tensor])
    first = errors.get(timeout=60)
    client.stop_stream()  # joins the thread that reads the stream: every error is in the queue
    seen = [first, *(errors.get_nowait() for _ in range(errors.qsize()))]
    if first is None:
        codes["ModelStreamInfer"] = ["OK", ""]
    else:  # the first error's message (a reply's error_message), and the status the stream ended with
        ended = [_code(e) for e in seen if e is not None and e.status()]
        codes["ModelStreamInfer"] = [ended[-1] if ended else "UNKNOWN", first.message() or ""]
    return codes


def _aio_stream(target: str, headers: dict[str, str]) -> list[str]:
    """The asyncio client's stream_infer of three requests: [the status code it ended with, the first
    error message it saw]."""
    import asyncio

    import tritonclient.grpc.aio as aio

    async def stream() -> list[str]:
        client = aio.InferenceServerClient(target)
        tensor = triton.InferInput("PIXELS", [1, 1], "UINT8")
        tensor.set_data_from_numpy(np.zeros((1, 1), np.uint8))

        async def requests() -> Any:
            for i in range(3):
                yield {"model_name": "demo", "inputs": [tensor], "request_id": str(i)}

        said = ""  # the first error a reply carried (its error_message)
        try:
            async for _result, error in client.stream_infer(requests(), headers=headers):
                if error is None:
                    return ["OK", ""]
                said = said or error.message() or ""
            return ["OK", said]
        except InferenceServerException as exc:
            return [_code(exc), said or exc.message() or ""]
        except Exception as exc:  # the aio client raises gRPC's own error for a failed stream
            code = getattr(exc, "code", None)
            return [code().name if callable(code) else type(exc).__name__,
                    said or getattr(exc, "details", str)()]
        finally:
            await client.close()

    return asyncio.run(asyncio.wait_for(stream(), 60))


def _code(exc: InferenceServerException) -> str:
    status = exc.status() or ""
    return status.replace("StatusCode.", "") or "UNKNOWN"


def run(plan: dict[str, Any]) -> list[dict[str, Any]]:
    client = triton.InferenceServerClient(plan["target"])
    headers = plan.get("headers") or {}
    results = []
    for call in plan["calls"]:
        h = {**headers, **call.get("headers", {})}
        model, version = call.get("model", "demo"), call.get("version", "")
        op = call["op"]
        try:
            if op == "live":
                value: Any = client.is_server_live(headers=h)
            elif op == "ready":
                value = client.is_server_ready(headers=h)
            elif op == "model_ready":
                value = client.is_model_ready(model, version, headers=h)
            elif op == "server_metadata":
                value = client.get_server_metadata(headers=h, as_json=True)
            elif op == "model_metadata":
                value = client.get_model_metadata(model, version, headers=h, as_json=True)
            elif op == "model_config":
                value = client.get_model_config(model, version, headers=h, as_json=True)
            elif op == "statistics":
                value = client.get_inference_statistics(call.get("model", ""), version, headers=h,
                                                        as_json=True)
            elif op in ("infer", "async_infer"):
                value = _infer(client, call, h)
            elif op == "unimplemented":
                value = _unimplemented(client, h)
            elif op == "aio_stream":
                value = _aio_stream(plan["target"], h)
            else:
                raise SystemExit(f"unknown op {op!r}")
            results.append({"ok": True, "value": value})
        except InferenceServerException as exc:
            results.append({"ok": False, "code": _code(exc), "message": exc.message()})
    client.close()
    return results


def main(argv: list[str]) -> int:
    if argv[:1] == ["descriptors"]:
        print(json.dumps(descriptors()))
        return 0
    if len(argv) == 3 and argv[0] == "run":
        with open(argv[1]) as f:
            plan = json.load(f)
        with open(argv[2], "w") as f:
            json.dump(run(plan), f)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
