"""Prometheus metrics of one server: the registry (`registry.py`), the gRPC interceptor that feeds
it (`interceptor.py`) and the HTTP listener that serves it on `--metrics-address` (`listener.py`)."""
