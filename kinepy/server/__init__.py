"""gRPC servicers: protobuf <-> domain types, domain errors -> etcd status codes. No SQL here."""
