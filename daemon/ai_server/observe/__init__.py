"""What the owner sees: Prometheus metrics."""
