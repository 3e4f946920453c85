"""SQL backends: one storage model (kv_log, kv_current, meta, leases) on several databases."""
