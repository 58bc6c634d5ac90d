"""The front: gRPC server assembly, RPC handlers, request parsing, replies, status codes, imaging,
security, metrics and the ``camserve serve`` command (no TensorFlow: only worker processes load models).

A request's way through it: ``service`` admits the call, ``requests`` validates it against the model's
:class:`~camserve.records.ModelSummary` into an :class:`~camserve.records.ItemSpec`, ``codec`` decodes
the image, the dispatcher (``camserve.scheduling``) computes it, ``replies`` builds the answer, and
``status`` turns any :class:`~camserve.records.Failure` into its gRPC status code.
"""
