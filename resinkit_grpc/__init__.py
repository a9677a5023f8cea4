"""resinkit-grpc: the gRPC system of record for long-running tasks and their history."""
