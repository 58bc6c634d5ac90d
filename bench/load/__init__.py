"""`python -m bench.load`: camserve's served throughput and tail latency beside a tf-keras-vis loop."""
