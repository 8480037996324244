"""HTTP and gRPC front ends (transport only; the logic lives below them)."""
