"""etcd semantics over any backend: validation, evaluation, group commit, watches, leases."""
