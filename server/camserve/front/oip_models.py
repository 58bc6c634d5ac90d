"""What the Open Inference Protocol says about a model: ModelMetadata, Triton's ModelConfig and
ModelStatistics, built from the repository's config, the worker's summary and the statistics.

Why from these three and nothing else: they are what camserve.v1's GetModel and /metrics report, so
both protocols describe the same model the same way. Before a worker has reported a model (while it
loads), the config alone answers: the class count then comes from the labels file, or is -1.
Variable dimensions are -1: the batch (first) dimension, and the class count K and heatmap size of
the explanation outputs, which depend on the request's ``top_k`` and ``heatmap_size``.
"""

from __future__ import annotations

from camserve_proto import grpc_service_pb2 as pb
from camserve_proto import oip

from camserve.front.statistics import Duration, ModelCounters
from camserve.records import ModelSummary
from camserve.repository import ModelConfig

__all__ = ["PLATFORM", "model_config", "model_metadata", "model_statistics", "tensor_shapes"]

#: What ModelMetadata and ModelConfig call the platform and backend.
PLATFORM = "camserve"


def _classes(cfg: ModelConfig, summary: ModelSummary | None) -> int:
    if summary is not None:
        return summary.num_classes
    return len(cfg.labels) if cfg.labels else -1


def tensor_shapes(cfg: ModelConfig, summary: ModelSummary | None) -> tuple[dict[str, list[int]],
                                                                             dict[str, list[int]]]:
    """(inputs, outputs): each tensor's name -> its shape without the batch dimension (-1 = variable)."""
    h, w, c = (summary.input_shape if summary is not None else cfg.input_shape)
    inputs = {oip.IMAGE: [1], oip.PIXELS: [int(h), int(w), int(c)]}
    outputs = {oip.PROBABILITIES: [_classes(cfg, summary)], oip.HEATMAP: [-1, -1, -1], oip.CLASS_IDS: [-1],
               oip.SCORES: [-1], oip.OVERLAY: [-1]}
    return inputs, outputs


def model_metadata(cfg: ModelConfig, summary: ModelSummary | None) -> pb.ModelMetadataResponse:
    """ModelMetadata: the served version, the inputs (one per request) and every output."""
    inputs, outputs = tensor_shapes(cfg, summary)
    meta = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=cfg.name, versions=[str(cfg.version)], platform=PLATFORM,
        inputs=[meta(name=n, datatype=oip.INPUTS[n], shape=[-1, *s]) for n, s in inputs.items()],
        outputs=[meta(name=n, datatype=oip.OUTPUTS[n], shape=[-1, *s]) for n, s in outputs.items()])


def model_config(cfg: ModelConfig, summary: ModelSummary | None) -> pb.ModelConfig:
    """Triton's configuration of the model, as perf_analyzer and tritonclient read it.

    ``max_batch_size`` is the model's compiled batch limit (a request of more rows is split across
    batches); both inputs are ``optional`` because a request carries exactly one of them; dynamic
    batching names the compiled buckets as preferred sizes, the queue delay and the queue bound.
    """
    inputs, outputs = tensor_shapes(cfg, summary)
    b = cfg.batching
    layout = {oip.PIXELS: pb.ModelInput.FORMAT_NHWC}
    config = pb.ModelConfig(
        name=cfg.name, platform=PLATFORM, backend=PLATFORM, max_batch_size=b.max_batch_size,
        input=[pb.ModelInput(name=n, data_type=oip.config_type(oip.INPUTS[n]), dims=d, optional=True,
                             format=layout.get(n, pb.ModelInput.FORMAT_NONE))
               for n, d in inputs.items()],
        output=[pb.ModelOutput(name=n, data_type=oip.config_type(oip.OUTPUTS[n]), dims=d)
                for n, d in outputs.items()],
        dynamic_batching=pb.ModelDynamicBatching(
            preferred_batch_size=list(summary.buckets) if summary is not None else [],
            max_queue_delay_microseconds=round(b.max_queue_delay_ms * 1000),
            default_queue_policy=pb.ModelQueuePolicy(max_queue_size=b.max_queue_size,
                                                     allow_timeout_override=True)))
    params = {"preprocessing": cfg.preprocessing, "score": cfg.score,
              "target_layer": cfg.target_layer or ""}
    if summary is not None:
        params.update(preprocessing=summary.preprocessing, target_layer=summary.target_layer,
                      compile_mode=summary.compile_mode,
                      backend=summary.backend, methods=",".join(summary.methods),
                      max_top_k=str(summary.max_top_k))
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def model_statistics(cfg: ModelConfig, counters: ModelCounters) -> pb.ModelStatistics:
    """One model's cumulative statistics (see ``camserve.front.statistics`` for what each counts).

    Triton records its three compute phases once per computed request, so their counts are equal, and
    perf_analyzer stops ("Server side statistics compute counts must be the same") when they are not.
    camserve does not time decoding and reply building apart from the call: ``compute_input`` and
    ``compute_output`` carry ``compute_infer``'s count and 0 ns (that time is in ``success``).
    """
    untimed = pb.StatisticDuration(count=counters.compute_infer.count, ns=0)
    return pb.ModelStatistics(
        name=cfg.name, version=str(cfg.version), last_inference=counters.last_inference_ms,
        inference_count=counters.inference_count, execution_count=counters.execution_count,
        inference_stats=pb.InferStatistics(success=_duration(counters.success), fail=_duration(counters.fail),
                                           queue=_duration(counters.queue), compute_input=untimed,
                                           compute_infer=_duration(counters.compute_infer),
                                           compute_output=untimed))
