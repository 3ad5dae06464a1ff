"""The usage section's numbers, read from the ledger: tokens and GPU-seconds per client today and
for each of the last 30 days, with each client's quota limits beside today's. Blocking (SQLite):
the supervisor calls it off its loop, and not on every tick (the ledger's rollups change by the
hour and the day; a few seconds late is on time for a chart)."""

from __future__ import annotations

from datetime import tzinfo
from typing import Any

from ai_server.observe.usage import windows
from ai_server.observe.usage.ledger import Ledger

DAYS = 30


def read(ledger: Ledger, now: float, tz: tzinfo, limits: dict[str, dict[str, float]]) -> dict[str, Any]:
    """{"today": [{client, tokens, gpu_seconds, limits}], "days": [{day, client, tokens, gpu_seconds}]}.
    `limits`: per client, "tokens" and "gpu_seconds" a day (absent or 0: none)."""
    midnight = windows.midnight(windows.today(now, tz).first_day, tz)
    today = [{"client": t.key, "tokens": t.input_tokens + t.output_tokens, "gpu_seconds": t.gpu_seconds,
              "limits": {k: v for k, v in limits.get(t.key, {}).items() if v}}
             for t in ledger.totals(midnight, now, "client", tz)]
    since = midnight - (DAYS - 1) * 86400
    days = []
    for client in ledger.totals(since, now, "client", tz):
        for day in ledger.totals(since, now, "day", tz, client=client.key):
            days.append({"day": day.key, "client": client.key, "tokens": day.input_tokens + day.output_tokens,
                         "gpu_seconds": day.gpu_seconds})
    return {"today": today, "days": days}
