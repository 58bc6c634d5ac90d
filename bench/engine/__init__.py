"""Engine benchmarks: Grad-CAM step vs plain forward throughput (``python -m bench.engine``) and the
localisation report on the demo set (``python -m bench.engine.localization``)."""
