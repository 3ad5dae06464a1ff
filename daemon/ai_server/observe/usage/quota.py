"""Quotas (pure): each client's use in its windows against its clients.toml limits, which clients
are over (HAProxy refuses them until the window resets), and who crossed 80%.

    tokens_per_day        input + output tokens since local midnight
    tokens_per_month      ... since the 1st
    gpu_seconds_per_day   seconds its requests held an engine slot, since local midnight

The Tally holds the use, by the local day and month each request ended in, so a request read
late (after midnight, say) still counts for the day it belongs to. Nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import tzinfo

from ai_server.access.clients import UNKNOWN, Clients, Policy
from ai_server.observe.records import Ended
from ai_server.observe.usage import windows
from ai_server.observe.usage.ledger import Use

QUOTAS = ("tokens_per_day", "tokens_per_month", "gpu_seconds_per_day")
WARN_AT = 0.8


@dataclass(frozen=True)
class Standing:
    """One client against one of its quotas."""
    client: str
    quota: str
    used: float
    limit: int
    resets_at: float          # epoch seconds

    @property
    def ratio(self) -> float:
        return self.used / self.limit if self.limit else 0.0

    @property
    def over(self) -> bool:
        return self.used >= self.limit


def limits(policy: Policy) -> dict[str, int]:
    return {q: getattr(policy, q) for q in QUOTAS if getattr(policy, q)}


@dataclass
class Tally:
    """Use per client, by local day and month: tokens and GPU-seconds."""
    tokens_day: dict[tuple[str, str], int] = field(default_factory=dict)
    tokens_month: dict[tuple[str, str], int] = field(default_factory=dict)
    gpu_day: dict[tuple[str, str], float] = field(default_factory=dict)

    @classmethod
    def starting(cls, use: dict[str, Use], now: float, tz: tzinfo) -> Tally:
        """From the ledger's sums for the windows `now` is in."""
        day, month = windows.today(now, tz).first_day, windows.this_month(now, tz).first_day[:7]
        tally = cls()
        for client, u in use.items():
            tally.tokens_day[(client, day)] = u.tokens_today
            tally.tokens_month[(client, month)] = u.tokens_month
            tally.gpu_day[(client, day)] = u.gpu_seconds_today
        return tally

    def add(self, record: Ended, tz: tzinfo) -> None:
        if not record.metered:
            return
        day = windows.bucket(record.ended_at, tz).day
        client, tokens = record.client, record.input_tokens + record.output_tokens
        self.tokens_day[(client, day)] = self.tokens_day.get((client, day), 0) + tokens
        self.tokens_month[(client, day[:7])] = self.tokens_month.get((client, day[:7]), 0) + tokens
        self.gpu_day[(client, day)] = self.gpu_day.get((client, day), 0.0) + record.gpu_s

    def forget_before(self, now: float, tz: tzinfo) -> None:
        """Drop days and months that ended (their windows can no longer be asked about)."""
        day, month = windows.today(now, tz).first_day, windows.this_month(now, tz).first_day[:7]
        for table, current in ((self.tokens_day, day), (self.gpu_day, day), (self.tokens_month, month)):
            for key in [k for k in table if k[1] < current]:
                del table[key]

    def use(self, client: str, now: float, tz: tzinfo) -> Use:
        day, month = windows.today(now, tz).first_day, windows.this_month(now, tz).first_day[:7]
        return Use(self.tokens_day.get((client, day), 0), self.tokens_month.get((client, month), 0),
                   round(self.gpu_day.get((client, day), 0.0), 3))


def standings(clients: Clients, tally: Tally, now: float, tz: tzinfo) -> list[Standing]:
    """Every client with a quota, against each of its quotas, in clients.toml's order."""
    day, month = windows.today(now, tz), windows.this_month(now, tz)
    found = []
    named = [(c.name, c.policy) for c in clients.clients] + [(UNKNOWN, clients.defaults)]
    for name, policy in named:
        use = tally.use(name, now, tz)
        for quota, limit in limits(policy).items():
            used: float = {"tokens_per_day": use.tokens_today, "tokens_per_month": use.tokens_month,
                           "gpu_seconds_per_day": use.gpu_seconds_today}[quota]
            resets = month.resets_at if quota == "tokens_per_month" else day.resets_at
            found.append(Standing(name, quota, used, limit, resets))
    return found


def refused(found: list[Standing]) -> dict[str, Standing]:
    """The clients over a quota, each with the one it waits longest for (its Retry-After)."""
    out: dict[str, Standing] = {}
    for standing in found:
        if standing.over and (standing.client not in out or standing.resets_at > out[standing.client].resets_at):
            out[standing.client] = standing
    return out


def warnings(found: list[Standing], warned: set[tuple[str, str, float]]) -> list[Standing]:
    """Quotas at WARN_AT or more that were not warned about in this window (`warned` is updated)."""
    out = []
    for standing in found:
        key = (standing.client, standing.quota, standing.resets_at)
        if standing.ratio >= WARN_AT and key not in warned:
            warned.add(key)
            out.append(standing)
    return out
