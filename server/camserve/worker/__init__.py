"""The worker process: loads the models, warms every batch bucket, then explains batch after batch.

``main.main`` is the process entry point the pool spawns; ``runner`` holds the compute behind a
small seam; ``slab`` is the shared-memory pixel buffer the parent writes and the worker reads. This
is the only part of the server that imports TensorFlow/Keras/JAX (through ``camserve.engine``), and
only inside the worker process.
"""
