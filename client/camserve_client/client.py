"""Sync and asyncio clients for camserve.

Both share request building and channel setup; only the transport differs. Retries are gRPC's own
(a service config on every channel, see :class:`~camserve_client.retry.RetryPolicy`), so the SDK has
no retry loop: gRPC retries UNAVAILABLE and RESOURCE_EXHAUSTED within the call's deadline, waits for a server
that cannot be reached (``waitForReady``) without spending attempts, honours the server's
``grpc-retry-pushback-ms`` (camserve sends ``-1`` on refusals no retry can fix, such as a request or
reply too large, and on NOT_READY a delay that spreads the remaining attempts over the deadline), and
stops retrying when the channel's retry budget is spent (``retryThrottling``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from camserve_proto import explain_pb2 as pb
from camserve_proto import explain_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from camserve_client import __version__
from camserve_client.callargs import MAX_TIMEOUT_S, call_timeout, checked_metadata
from camserve_client.connection import (
    diagnosed,
    health_not_found,
    probe,
    resolve_targets,
    worth_a_probe,
)
from camserve_client.errors import (
    CamserveError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unavailable,
    error_from_code,
    error_from_rpc,
)
from camserve_client.retry import MAX_ATTEMPTS, RetryPolicy
from camserve_client.types import (
    ExplainResult,
    ImageLike,
    ModelInfo,
    OutputLike,
    build_request,
    parse_model_info,
    parse_response,
    per_image,
)

MiB = 1024 * 1024
def _read_pem(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    text = str(value)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    try:
        return Path(text).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read TLS file {text}: {exc.strerror}") from None


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings. Each PEM is a path, PEM text or bytes.

    root_certificates: the CA that signed the server (None = system roots).
    certificate_chain + private_key: this client's certificate for mutual TLS.
    server_name: the name to verify in the server certificate when the target is an address.
    """

    root_certificates: bytes | str | Path | None = None
    certificate_chain: bytes | str | Path | None = None
    private_key: bytes | str | Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        chain, key = _read_pem(self.certificate_chain), _read_pem(self.private_key)
        if (chain is None) != (key is None):
            raise ValueError("mutual TLS needs both certificate_chain and private_key")
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.root_certificates), private_key=key, certificate_chain=chain)


class _ClientBase:
    """Configuration and request building shared by Client and AsyncClient."""

    def __init__(self, target: str | Sequence[str] = "localhost:50051", *, model: str | None = None,
                 timeout: float | None = 30.0, retries: int | RetryPolicy | None = MAX_ATTEMPTS - 1,
                 tls: bool | TLSConfig | None = None, token: str | None = None,
                 max_send_message_mb: float = 64, max_receive_message_mb: float = 64,
                 load_balancing: str | None = None, options: Sequence[tuple[str, Any]] = (),
                 metadata: Sequence[tuple[str, str]] = (), interceptors: Sequence[Any] = ()) -> None:
        self.target, balanced = resolve_targets(target)
        self.model = model
        call_timeout(timeout)  # NaN or not a number: refused here, not at the first call
        self.timeout = timeout
        self.retry = RetryPolicy.coerce(retries)
        self._metadata: tuple[tuple[str, str], ...] = checked_metadata(metadata, token)
        send_bytes = int(max_send_message_mb * MiB)
        policy = load_balancing or ("round_robin" if balanced else None)
        opts: dict[str, Any] = {
            "grpc.max_send_message_length": send_bytes,
            "grpc.max_receive_message_length": int(max_receive_message_mb * MiB),
            "grpc.primary_user_agent": f"camserve-client/{__version__}",
            # Reconnect quickly after a server restart; the default caps at 120 s.
            "grpc.initial_reconnect_backoff_ms": 200,
            "grpc.min_reconnect_backoff_ms": 200,
            "grpc.max_reconnect_backoff_ms": 2000,
            # gRPC retries only a request it still holds, by default one of at most 256 KiB: without
            # this an ExplainBatch of a few images would never be retried.
            "grpc.per_rpc_retry_buffer_size": send_bytes,
            "grpc.service_config": json.dumps(self.retry.service_config(policy)),
        }
        if policy:
            opts["grpc.lb_policy_name"] = policy
        if isinstance(tls, TLSConfig) and tls.server_name:
            opts["grpc.ssl_target_name_override"] = tls.server_name
        opts.update(dict(options))
        self._options = list(opts.items())
        self._credentials: grpc.ChannelCredentials | None = None
        if tls:
            self._credentials = (tls if isinstance(tls, TLSConfig) else TLSConfig()).credentials()
        self._interceptors = list(interceptors)

    # -- request building ------------------------------------------------------------------
    def _request(self, image: ImageLike | pb.Image, model: str | None, **kw: Any) -> pb.ExplainRequest:
        if kw.get("request_id") is None:
            kw["request_id"] = uuid.uuid4().hex
        try:
            return build_request(image, model=model or self.model, **kw)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None

    def _batch_request(self, images: Sequence[ImageLike], model: str | None, method: Any,
                       class_index: Any, top_k: int, target_layer: str | None, output: Any,
                       request_ids: Sequence[str] | None, model_version: int) -> pb.ExplainBatchRequest:
        images = list(images)
        if not images:
            raise InvalidArgument("explain_batch needs at least one image")
        classes = per_image(class_index, len(images), "class_index")
        ids = per_image(list(request_ids) if request_ids is not None else None, len(images), "request_ids")
        reqs = []
        for i, (img, cls, rid) in enumerate(zip(images, classes, ids, strict=True)):
            try:
                reqs.append(self._request(img, model, method=method, class_index=cls, top_k=top_k,
                                          target_layer=target_layer, output=output, request_id=rid,
                                          model_version=model_version))
            except (InvalidArgument, FileNotFoundError, TypeError) as exc:
                msg = exc.details if isinstance(exc, CamserveError) else str(exc)
                raise type(exc)(f"image {i}: {msg}") from None
        return pb.ExplainBatchRequest(requests=reqs)

    def _timeout(self, timeout: float | None) -> float | None:
        """The call's timeout in seconds (None: no deadline); an explicit <= 0, infinity or more than
        :data:`MAX_TIMEOUT_S` means none (:func:`call_timeout`)."""
        return call_timeout(self.timeout if timeout is None else timeout)

    def _diagnosed(self, err: CamserveError, probe: str | None, waited: float | None) -> CamserveError:
        """``err`` in the caller's words when no connection was made (connection.diagnosed)."""
        return diagnosed(err, probe, waited, self.target, self._credentials is not None)


def _status_name(resp: health_pb2.HealthCheckResponse) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


class Client(_ClientBase):
    """Blocking camserve client; thread-safe (one channel, many threads).

    ``target``: "host:port", a list or comma-separated string of them (round-robin), or
    "dns:///host:port" (a URL is refused: ValueError). ``model``: the default model name (None: the
    server's). ``timeout``: seconds per call (None, <= 0 or infinite: none); a call waits this long for a
    server it cannot reach yet. ``retries``: 0..4 or a :class:`RetryPolicy`. ``tls``: True (system roots) or
    a :class:`TLSConfig`; ``token``: sent as "authorization: Bearer <token>". Message limits in MiB.

    Every call raises a :class:`~camserve_client.errors.CamserveError` subclass for a status
    (NotFound, InvalidArgument, FailedPrecondition, ResourceExhausted, DeadlineExceeded, Unavailable,
    Unauthenticated; ``unreachable`` set when no server was reached), and ValueError / TypeError /
    FileNotFoundError for arguments refused before sending.

    >>> with Client("localhost:50051") as c:
    ...     r = c.explain("digit6.png", method="gradcam", output={"overlay": "png"})
    ...     r.heatmap.shape, r.label, r.timing.batch_size
    """

    def __init__(self, target: str | Sequence[str] = "localhost:50051", **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        if self._credentials is not None:
            channel = grpc.secure_channel(self.target, self._credentials, options=self._options)
        else:
            channel = grpc.insecure_channel(self.target, options=self._options)
        if self._interceptors:
            channel = grpc.intercept_channel(channel, *self._interceptors)
        self.channel: grpc.Channel = channel
        self._stub = pb_grpc.ExplainServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    def _call(self, fn: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        """``fn(request)`` within the call's deadline (gRPC retries per the policy); typed errors."""
        try:
            return fn(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            err = error_from_rpc(exc)
            raise self._diagnosed(err, self._probe() if worth_a_probe(err) else None,
                                  self._timeout(timeout)) from None

    def _probe(self) -> str | None:
        """gRPC's connection error, asked without waiting (connection.probe); None if a server answers."""
        return probe(self.target, self._credentials, self._options, self._metadata)

    def explain(self, image: ImageLike, model: str | None = None, method: str = "gradcam",
                class_index: int | None = None, top_k: int = 1, target_layer: str | None = None,
                output: OutputLike = None, timeout: float | None = None,
                request_id: str | None = None, model_version: int = 0) -> ExplainResult:
        """Explain one image: a path, encoded bytes (JPEG/PNG/WebP/BMP), a buffer, or an (H,W[,C])
        uint8 array (raw pixels) or float32 array (preprocessed, at the model's input size).
        ``class_index`` (0-based) or ``top_k`` (not both); ``output``: :class:`OutputOptions` or a dict.
        Returns an :class:`ExplainResult` (maps (h, w) float32 in [0, 1] at ``output["size"]``)."""
        req = self._request(image, model, method=method, class_index=class_index, top_k=top_k,
                            target_layer=target_layer, output=output, request_id=request_id,
                            model_version=model_version)
        t0 = time.perf_counter()
        resp = self._call(self._stub.Explain, req, timeout)
        return parse_response(resp, (time.perf_counter() - t0) * 1e3, output)

    def explain_batch(self, images: Sequence[ImageLike], model: str | None = None, method: str = "gradcam",
                      class_index: int | Sequence[int | None] | None = None, top_k: int = 1,
                      target_layer: str | None = None, output: OutputLike = None,
                      timeout: float | None = None, request_ids: Sequence[str] | None = None,
                      model_version: int = 0) -> list[ExplainResult]:
        """Explain many images in one call (one result each, in order); class_index may be one value or
        one per image. One refused image fails the call (its index in the message)."""
        req = self._batch_request(images, model, method, class_index, top_k, target_layer, output,
                                  request_ids, model_version)
        t0 = time.perf_counter()
        resp = self._call(self._stub.ExplainBatch, req, timeout)
        ms = (time.perf_counter() - t0) * 1e3
        return [parse_response(r, ms, output) for r in resp.responses]

    def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        """Every served model, with its input shape, classes, layers, methods and batching."""
        resp = self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [parse_model_info(m) for m in resp.models]

    def get_model(self, name: str | None = None, version: int = 0, timeout: float | None = None) -> ModelInfo:
        """One model (None: the client's, else the server's default; version 0: newest); NotFound."""
        req = pb.GetModelRequest(model=name or self.model or "", model_version=version)
        return parse_model_info(self._call(self._stub.GetModel, req, timeout))

    def health(self, model: str | None = None, timeout: float | None = None) -> str:
        """'SERVING', 'NOT_SERVING', ... for the whole server (model=None) or one model (grpc.health.v1
        Check, never retried); NotFound for a model the server does not serve, Unavailable (with
        ``unreachable`` set and the fix in its message) when no connection can be made."""
        try:
            return _status_name(self._call(self._health.Check,
                                           health_pb2.HealthCheckRequest(service=model or ""), timeout))
        except NotFound as exc:
            raise health_not_found(exc, model) from None

    def connection_error(self) -> str | None:
        """Why no server at the target can be reached now (the fix, then gRPC's words), or None when one
        answers a health check; takes at most a few seconds. For a call that is still waiting."""
        details = self._probe()
        return None if details is None else self._diagnosed(Unavailable(""), details, None).details

    def wait_ready(self, timeout: float = 60.0, model: str | None = None, poll_s: float = 0.2) -> None:
        """Block until health is SERVING, waiting for an unreachable server too; DeadlineExceeded after
        ``timeout`` (infinite: none), NotFound at once for a model the server does not serve."""
        call_timeout(timeout)  # NaN or not a number: ValueError
        deadline = time.monotonic() + timeout
        last = "no answer"
        request = health_pb2.HealthCheckRequest(service=model or "")
        while (left := deadline - time.monotonic()) > 0:
            try:
                last = _status_name(self._health.Check(request, timeout=call_timeout(left),
                                                       wait_for_ready=True, metadata=self._metadata))
                if last == "SERVING":
                    return
            except grpc.RpcError as exc:
                err = error_from_rpc(exc)
                if err.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise health_not_found(err, model) from None
                last = err.code.name
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        err = DeadlineExceeded(f"{self.target} not SERVING after {timeout:g} s (last: {last})")
        probe = self._probe() if last != "NOT_SERVING" else None
        raise self._diagnosed(err, probe, timeout) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_ClientBase):
    """asyncio camserve client (grpc.aio); create and use it inside one running event loop."""

    def __init__(self, target: str | Sequence[str] = "localhost:50051", **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        ic = self._interceptors or None
        if self._credentials is not None:
            self.channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options,
                                                   interceptors=ic)
        else:
            self.channel = grpc.aio.insecure_channel(self.target, options=self._options, interceptors=ic)
        self._stub = pb_grpc.ExplainServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def _call(self, fn: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        try:
            return await fn(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            err = error_from_rpc(exc)
            raise self._diagnosed(err, await self._probe() if worth_a_probe(err) else None,
                                  self._timeout(timeout)) from None

    async def _probe(self) -> str | None:
        """See Client._probe (a blocking check of at most a few seconds, off the event loop)."""
        return await asyncio.to_thread(probe, self.target, self._credentials, self._options, self._metadata)

    async def explain(self, image: ImageLike, model: str | None = None, method: str = "gradcam",
                      class_index: int | None = None, top_k: int = 1, target_layer: str | None = None,
                      output: OutputLike = None, timeout: float | None = None,
                      request_id: str | None = None, model_version: int = 0) -> ExplainResult:
        """Explain one image (see Client.explain)."""
        req = self._request(image, model, method=method, class_index=class_index, top_k=top_k,
                            target_layer=target_layer, output=output, request_id=request_id,
                            model_version=model_version)
        t0 = time.perf_counter()
        resp = await self._call(self._stub.Explain, req, timeout)
        return parse_response(resp, (time.perf_counter() - t0) * 1e3, output)

    async def explain_batch(self, images: Sequence[ImageLike], model: str | None = None,
                            method: str = "gradcam", class_index: int | Sequence[int | None] | None = None,
                            top_k: int = 1, target_layer: str | None = None,
                            output: OutputLike = None,
                            timeout: float | None = None, request_ids: Sequence[str] | None = None,
                            model_version: int = 0) -> list[ExplainResult]:
        req = self._batch_request(images, model, method, class_index, top_k, target_layer, output,
                                  request_ids, model_version)
        t0 = time.perf_counter()
        resp = await self._call(self._stub.ExplainBatch, req, timeout)
        ms = (time.perf_counter() - t0) * 1e3
        return [parse_response(r, ms, output) for r in resp.responses]

    async def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        resp = await self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [parse_model_info(m) for m in resp.models]

    async def get_model(self, name: str | None = None, version: int = 0,
                        timeout: float | None = None) -> ModelInfo:
        req = pb.GetModelRequest(model=name or self.model or "", model_version=version)
        return parse_model_info(await self._call(self._stub.GetModel, req, timeout))

    async def connection_error(self) -> str | None:
        """See Client.connection_error."""
        details = await self._probe()
        return None if details is None else self._diagnosed(Unavailable(""), details, None).details

    async def health(self, model: str | None = None, timeout: float | None = None) -> str:
        """See Client.health."""
        request = health_pb2.HealthCheckRequest(service=model or "")
        try:
            return _status_name(await self._call(self._health.Check, request, timeout))
        except NotFound as exc:
            raise health_not_found(exc, model) from None

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["MAX_TIMEOUT_S", "AsyncClient", "Client", "TLSConfig", "call_timeout", "checked_metadata",
           "error_from_code", "resolve_targets"]
