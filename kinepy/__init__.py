"""kinepy: the etcd v3 API over SQL databases."""

__version__ = "0.1.0"
