"""The supervised processes: the seven states, one child's lifecycle and process, the engine
(loopback forced and audited, drained, warmed) and HAProxy (config installed, maps swapped)."""
