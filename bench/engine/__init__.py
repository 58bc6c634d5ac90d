"""Engine benchmarks: Grad-CAM step vs plain forward throughput (``python -m bench.engine``) and the
localisation report on the demo set (``python -m bench.engine.localization``), and what top_k and the
input dtype cost the step (CPU per image, warm-up, traces: ``python -m bench.engine.topk``)."""
