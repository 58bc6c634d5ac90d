"""deploy/kserve: the ServingRuntime and InferenceService pass offline validation, and each check
catches the mistake it exists for (each broken case changes one thing of the real manifests)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from deploy.kserve import validate

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return validate.load()


def test_shipped_manifests_pass(docs: list[Doc]) -> None:
    assert [d["kind"] for d in docs] == ["ServingRuntime", "InferenceService"]
    assert validate.problems(docs) == []


def _runtime(docs: list[Doc]) -> Doc:
    return docs[0]


def _container(docs: list[Doc]) -> Doc:
    return docs[0]["spec"]["containers"][0]


def _model(docs: list[Doc]) -> Doc:
    return docs[1]["spec"]["predictor"]["model"]


def _set_arg(flag: str, value: str) -> Callable[[list[Doc]], None]:
    def change(docs: list[Doc]) -> None:
        args = _container(docs)["args"]
        (i,) = [i for i, a in enumerate(args) if a.startswith(flag + "=")]
        args[i] = f"{flag}={value}"

    return change


BROKEN: list[tuple[str, Callable[[list[Doc]], None], str]] = [
    ("unknown field in the runtime", lambda d: _runtime(d)["spec"].update(multiModels=False),
     "'multiModels' was unexpected"),
    ("wrong type in the InferenceService", lambda d: d[1]["spec"]["predictor"].update(minReplicas="one"),
     "minReplicas: 'one' is not of type 'integer'"),
    ("container field misspelt", lambda d: _container(d).update(imagePullPolicyy="Always"),
     "'imagePullPolicyy' was unexpected"),
    ("invalid pod", lambda d: _runtime(d)["spec"]["tolerations"][0].update(effect=3), "pod"),
    ("runtime not found", lambda d: _model(d).update(runtime="triton"), "runtime 'triton' is none"),
    ("unsupported model format", lambda d: _model(d)["modelFormat"].update(name="tensorflow"),
     "is not one the runtime supports"),
    ("HTTP protocol", lambda d: _model(d).update(protocolVersion="v2"), "camserve speaks 'grpc-v2'"),
    ("no storage", lambda d: _model(d).pop("storageUri"), "no storageUri"),
    ("a flag camserve does not have", lambda d: _container(d)["args"].append("--grpc_port=1"),
     "camserve serve refuses the arguments"),
    ("server on another port", _set_arg("--grpc-port", "9000"), "the port named 'h2c'"),
    ("probe on another port", lambda d: _container(d)["readinessProbe"]["grpc"].update(port=8080),
     "readinessProbe asks gRPC port 8080"),
    ("models read elsewhere", _set_arg("--model-repository", "/models"), "KServe mounts the model at"),
    ("another image", lambda d: _container(d).update(image="camserve:latest"),
     "is not deploy/k8s's GPU image"),
    ("grace shorter than the drain",
     lambda d: d[1]["spec"]["predictor"].update(terminationGracePeriodSeconds=30),
     "must exceed pre-stop 10 + drain 30"),
]


@pytest.mark.parametrize(("what", "change", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_each_rule_catches_its_mistake(docs: list[Doc], what: str, change: Callable[[list[Doc]], None],
                                       expected: str) -> None:
    broken = copy.deepcopy(docs)
    change(broken)
    found = validate.problems(broken)
    assert any(expected in p for p in found), (what, found)
