"""What the owner sees: request records (records.py), Prometheus metrics, usage (usage/)."""
