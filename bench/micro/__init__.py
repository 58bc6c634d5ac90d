"""Front-end micro-benchmarks: ``python -m bench.micro``."""
