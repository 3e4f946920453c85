"""etcd v3.6.6 protos without annotations, and the modules scripts/gen-proto generates from them."""
