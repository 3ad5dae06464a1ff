"""The Lua HAProxy loads: ai_server.lua, a file of this package, copied verbatim into the state
dir. Nothing in it is generated. What it needs to know comes in as variables haproxy.cfg sets
(proc.* in its global section, txn.* before each call), so a change to them is a change to
haproxy.cfg, checked and reloaded like any other.

Two actions:
- ai_server_hold: while hold.map says "hold 1", a request waits (at most proxy.queue_timeout)
  for the engine to come back, instead of failing;
- ai_server_model: the model a request names, as the engine will read it, into txn.model and
  its verdict into txn.model_verdict (access/modelscan.py is its Python twin). A body it could
  not judge in time (proc.ais_scan_ms) is "slow"; haproxy.cfg refuses any request whose
  verdict was never set, so an action that fails or is cut short never lets a body through.
"""

from __future__ import annotations

from importlib import resources

from ai_server.access import policy
from ai_server.haproxy import meter

LUA = "ai_server.lua"
# The variables it reads, set in haproxy.cfg's global section (render.py).
HOLD_MS, SCAN_MS, OLLAMA = "proc.ais_hold_ms", "proc.ais_scan_ms", "proc.ais_ollama"
# The model check's time on one body, as HAProxy's CPU time (ai_server.lua says why not its
# clock); a body it cannot read in that time is refused (413).
# The worst a client can send (a body of nothing but tiny strings) takes ~50 ms a MiB here
# (lua5.3 alone: 45 ms, 36 before the plain delimiter searches of finding C).
SCAN_BUDGET_MS = 1000
# HAProxy's own limit on a Lua action's run time (sleeps not counted): past it the action is
# cut, and the request, its verdict never set, refused.
LUA_TIMEOUT_MS = 2000
# Lua's memory, all threads together (tune.lua.maxmem). Past it an allocation fails, and
# HAProxy 2.6 can abort the worker for it (attacker's finding A), so it has room for all that
# the bounds let in at once: a copy of each body the model check reads, as many as the body
# classes admit (policy.body_classes: every class admits one, so with a large max_body_mb
# and a small body_memory_mb they hold more than the budget: 262 MiB against 100 took the
# worker down, attacker's pass 9); the metering filter's copy of each non-streamed answer it
# reads (meter.MAX_JSON, one per generation in flight, and one more while one is read); and
# room. Lua's emergency collection runs first, so garbage never counts.
LUA_HEADROOM_MB = 64


def maxmem_mb(max_body_bytes: int, body_memory_bytes: int, answers: int) -> int:
    """`answers`: how many metered answers can be in flight at once (the generation slots)."""
    bodies = sum(upper * limit for _, upper, limit in policy.body_classes(max_body_bytes, body_memory_bytes))
    return -(-(bodies + (answers + 1) * meter.MAX_JSON) >> 20) + LUA_HEADROOM_MB


def source() -> str:
    return resources.files("ai_server.haproxy").joinpath(LUA).read_text(encoding="utf-8")
