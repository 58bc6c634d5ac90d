"""camserve benchmarks (``python -m bench.<name>``); figures quoted in the README come from here."""
