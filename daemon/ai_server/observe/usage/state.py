"""Usage at one moment, as a value (the daemon's snapshot carries it): the ledger's health, each
client's use today and this month, and where it stands against its quotas."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from ai_server.observe.usage import windows
from ai_server.observe.usage.ledger import Use
from ai_server.observe.usage.quota import Standing


@dataclass(frozen=True)
class UsageState:
    tz: tzinfo
    ledger_file: str
    problem: str | None                       # why the ledger is not written now
    unrecorded: int                           # metered requests read but not in the ledger
    today: tuple[tuple[str, Use], ...]        # every client's use in its windows, clients.toml's order
    standings: tuple[Standing, ...]           # every client with a quota, against each of them
    log_dropped: int | None = None            # HAProxy's count of log lines it could not write

    @property
    def quotas(self) -> tuple[tuple[str, str, float], ...]:
        """(client, quota, share used): what the alerts and /metrics read."""
        return tuple((s.client, s.quota, s.ratio) for s in self.standings)

    def limits(self) -> dict[str, dict[str, float]]:
        """Per client, its daily limits as the dashboard charts them ("tokens", "gpu_seconds")."""
        out: dict[str, dict[str, float]] = {}
        names = {"tokens_per_day": "tokens", "gpu_seconds_per_day": "gpu_seconds"}
        for s in self.standings:
            if s.quota in names:
                out.setdefault(s.client, {})[names[s.quota]] = s.limit
        return out

    def as_json(self) -> dict[str, Any]:
        """status --json's "usage"; `clients` reads "today" and "quotas" too."""
        return {
            "ledger": {"ok": self.problem is None, "problem": self.problem, "unrecorded": self.unrecorded,
                       "file": self.ledger_file, "log_dropped": self.log_dropped},
            "today": {name: {"tokens": u.tokens_today, "tokens_month": u.tokens_month, "gpu_seconds": u.gpu_seconds_today}
                      for name, u in self.today},
            "quotas": [{"client": s.client, "quota": s.quota, "used": s.used, "limit": s.limit,
                        "ratio": round(s.ratio, 4), "resets_at": windows.iso(s.resets_at, self.tz), "over": s.over}
                       for s in self.standings],
        }
