"""`ai-server run`: the supervisor's loop, the reload plan, the control socket and its commands,
and the preflight checks that run before anything starts."""
