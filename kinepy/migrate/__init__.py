"""Moving a store between kinepy backends, and in from kine and etcd."""
