"""Metered requests summed into the ledger's rows (pure).

The ledger keeps rollups, not one row per request: per local hour, per local day and per
local month, each keyed by client, model and node. A row holds sums (requests, errors, tokens
in and out, GPU milliseconds, estimated and cut requests) and a histogram of time to first
token, from which p50 and p95 are read: exact to within one bucket (buckets grow by 25%, so
within about 12% either way). A window is read from the coarsest rows that fit it (a year:
its months, plus the days and hours at its start), so a year of 20 clients is a few hundred
rows, however many requests it held.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo

from ai_server.config import LOCAL_NODE
from ai_server.observe.records import ESTIMATED, Ended
from ai_server.observe.usage.windows import bucket, midnight

# Upper bounds (ms) of the time-to-first-token buckets: 10 ms to about 4 minutes, each 25%
# wider than the last; one more bucket holds everything above.
TTFT_EDGES_MS: tuple[float, ...] = tuple(round(10 * 1.25 ** i, 3) for i in range(46))
TTFT_BUCKETS = len(TTFT_EDGES_MS) + 1

Key = tuple[str, str, str]   # client, model, node


def ttft_bucket(ms: float) -> int:
    return bisect.bisect_left(TTFT_EDGES_MS, ms)


@dataclass
class Sums:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    gpu_ms: int = 0
    estimated: int = 0
    cut: int = 0
    queue_ms: int = 0        # time waiting for an engine slot
    ttft: list[int] = field(default_factory=lambda: [0] * TTFT_BUCKETS)

    def add_record(self, record: Ended) -> None:
        self.requests += 1
        self.errors += 1 if record.status is None or record.status >= 400 else 0
        self.input_tokens += record.input_tokens
        self.output_tokens += record.output_tokens
        self.gpu_ms += int(round(record.gpu_s * 1000))
        self.estimated += 1 if record.usage_source == ESTIMATED else 0
        self.cut += 1 if record.cut else 0
        self.queue_ms += record.t_queue_ms if record.queued and record.t_queue_ms and record.t_queue_ms > 0 else 0
        if record.ttft_ms is not None:
            self.ttft[ttft_bucket(record.ttft_ms)] += 1

    def add(self, other: Sums) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.gpu_ms += other.gpu_ms
        self.estimated += other.estimated
        self.cut += other.cut
        self.queue_ms += other.queue_ms
        self.ttft = [a + b for a, b in zip(self.ttft, other.ttft, strict=True)]

    def values(self) -> tuple[int, ...]:
        return (self.requests, self.errors, self.input_tokens, self.output_tokens, self.gpu_ms, self.estimated,
                self.cut, self.queue_ms, *self.ttft)

    @classmethod
    def of(cls, values: Sequence[int | None]) -> Sums:
        v = [int(x or 0) for x in values]
        requests, errors, given, output, gpu_ms, estimated, cut, queue_ms = v[:8]
        return cls(requests, errors, given, output, gpu_ms, estimated, cut, queue_ms, ttft=v[8:8 + TTFT_BUCKETS])


def key(record: Ended) -> Key:
    return (record.client, record.model or "", record.node or LOCAL_NODE)


# A period: the epoch second it starts at, and its label (local day YYYY-MM-DD for hours and
# days, YYYY-MM for months).
Period = tuple[int, str]


@dataclass
class Batch:
    """A batch of records as the ledger adds them: sums per local hour, day and month."""
    hourly: dict[tuple[Period, Key], Sums] = field(default_factory=dict)
    daily: dict[tuple[Period, Key], Sums] = field(default_factory=dict)
    monthly: dict[tuple[Period, Key], Sums] = field(default_factory=dict)


def rollup(records: Iterable[Ended], tz: tzinfo) -> Batch:
    """Metered records summed by the local hour, day and month they ended in."""
    batch = Batch()
    months: dict[str, int] = {}
    for record in records:
        if not record.metered:
            continue
        where, k = bucket(record.ended_at, tz), key(record)
        month = where.day[:7]
        if month not in months:
            months[month] = int(midnight(month + "-01", tz))
        batch.hourly.setdefault(((where.hour, where.day), k), Sums()).add_record(record)
        batch.daily.setdefault(((where.day_start, where.day), k), Sums()).add_record(record)
        batch.monthly.setdefault(((months[month], month), k), Sums()).add_record(record)
    return batch


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The q-quantile (0..1) of a time-to-first-token histogram, in ms: linear within its bucket
    (the first bucket from 0, the last reported at its lower edge). None when it is empty."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = TTFT_EDGES_MS[i - 1] if i > 0 else 0.0
            if i >= len(TTFT_EDGES_MS):
                return low
            high = TTFT_EDGES_MS[i]
            return round(low + (high - low) * max(0.0, rank - seen) / count, 1)
        seen += count
    return TTFT_EDGES_MS[-1]
