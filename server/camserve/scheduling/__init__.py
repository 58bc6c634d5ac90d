"""Scheduling: dynamic batching and the worker pool (no TensorFlow, no gRPC).

``dispatcher.Dispatcher`` is the one object the front uses: it owns a ``batcher.Batcher`` (bounded
per-model queues and the batch-formation rule) and a ``pool.WorkerPool`` (one process per GPU or N
CPU processes, fed through shared memory, restarted when they die). ``observer.Observer`` is how
scheduling reports events to metrics without knowing Prometheus.
"""
