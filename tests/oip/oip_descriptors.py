"""Protocol descriptors as plain JSON-able data, to compare camserve's .proto with a stock client's.

Pure protobuf (no tritonclient, no camserve), so both environments import it: the test side with
camserve's generated module, ``triton_calls.py`` with tritonclient's.
"""

from __future__ import annotations

from typing import Any


def describe(*files: Any) -> dict[str, Any]:
    """{message: {field: [number, type, repeated, type name, oneof]}}, {enum: {value: number}} and
    {service: {method: [input, output, client streaming, server streaming]}} for the file descriptors."""
    out: dict[str, Any] = {}

    def kind(f: Any) -> str:
        named = f.message_type or f.enum_type
        return named.full_name if named else ""

    def message(d: Any) -> None:
        out[d.full_name] = {f.name: [f.number, f.type, bool(f.is_repeated), kind(f),
                                     f.containing_oneof.name if f.containing_oneof else ""] for f in d.fields}
        for nested in d.nested_types:
            message(nested)
        for e in d.enum_types:
            out[e.full_name] = {v.name: v.number for v in e.values}

    for fd in files:
        for d in fd.message_types_by_name.values():
            message(d)
        for e in fd.enum_types_by_name.values():
            out[e.full_name] = {v.name: v.number for v in e.values}
        for s in fd.services_by_name.values():
            out[s.full_name] = {m.name: [m.input_type.full_name, m.output_type.full_name, m.client_streaming,
                                         m.server_streaming] for m in s.methods}
    return out
