"""GPU proof through Keras-on-JAX: engine and served benchmarks for a lent GPU machine (``run.sh``)."""
