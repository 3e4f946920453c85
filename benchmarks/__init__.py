"""kinepy's benchmark suite against a real etcd and kine: `python -m benchmarks --help`, README.md."""
