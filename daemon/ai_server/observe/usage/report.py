"""`ai-server usage`: the ledger's totals as a table, JSON or CSV (pure, but for reading the
ledger in `usage()`)."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from ai_server.base.errors import AiServerError, LedgerError
from ai_server.observe.usage import windows
from ai_server.observe.usage.ledger import FILE, Ledger, Totals

COLUMNS = ("requests", "errors", "input_tokens", "output_tokens", "gpu_seconds", "estimated", "cut", "queue_seconds",
           "ttft_p50_ms", "ttft_p95_ms")
_AGO = re.compile(r"([0-9]{1,6})([mhdw])")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float, tz: tzinfo) -> float:
    """--since: "24h", "7d", "90m", "2w" ago; a local date (2026-11-01, from its midnight); or a
    date and time (2026-11-01T08:00, local unless it says its offset)."""
    found = _AGO.fullmatch(text.strip())
    if found:
        since = now - int(found.group(1)) * _UNITS[found.group(2)]
        try:  # "999999w" is before year 1: no date can say it
            datetime.fromtimestamp(since, tz)
        except (ValueError, OverflowError, OSError):
            raise AiServerError(f"--since {text!r}: further back than any date") from None
        return since
    try:
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            return windows.midnight(text, tz)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise AiServerError(f"--since {text!r}: use 24h, 7d, 2026-11-01 or 2026-11-01T08:00") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=tz)).timestamp()


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def as_json(rows: list[Totals], since: float, until: float, by: str) -> dict[str, Any]:
    return {"since": _utc(since), "until": _utc(until), "by": by, "rows": [r.as_dict() for r in rows]}


def as_csv(rows: list[Totals], by: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([by, *COLUMNS])
    for row in rows:
        d = row.as_dict()
        writer.writerow([row.key, *("" if d[c] is None else d[c] for c in COLUMNS)])
    return out.getvalue()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _cells(r: Totals, ttft: bool = True) -> tuple[str, str, str, str, str, str, str, str, str, str]:
    return (r.key, str(r.requests), str(r.errors), str(r.input_tokens), str(r.output_tokens), f"{r.gpu_seconds:.1f}",
            f"{r.queue_seconds:.1f}", str(r.estimated), _ms(r.ttft_p50_ms) if ttft else "", _ms(r.ttft_p95_ms) if ttft else "")


def total(rows: list[Totals]) -> Totals:
    """Every row summed (the percentiles cannot be: none)."""
    return Totals("total", sum(r.requests for r in rows), sum(r.errors for r in rows), sum(r.input_tokens for r in rows),
                  sum(r.output_tokens for r in rows), round(sum(r.gpu_seconds for r in rows), 3),
                  sum(r.estimated for r in rows), sum(r.cut for r in rows), round(sum(r.queue_seconds for r in rows), 3),
                  None, None)


def as_table(rows: list[Totals], since: float, until: float, by: str, tz: tzinfo) -> str:
    head = f"usage from {windows.iso(since, tz)} to {windows.iso(until, tz)}, by {by}"
    if not rows:
        return head + "\n(nothing metered in this window)"
    table = [(by, "requests", "errors", "tokens in", "tokens out", "GPU s", "queued s", "estimated", "TTFT p50 ms", "p95 ms")]
    table += [_cells(r) for r in rows]
    if len(rows) > 1:
        table.append(_cells(total(rows), ttft=False))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
             for line in table]
    return "\n".join([head, *lines])


def usage(state_dir: Path, since: float, until: float, by: str, tz: tzinfo, client: str | None) -> list[Totals]:
    """The ledger's totals, read-only (the supervisor may be writing it at the same time)."""
    path = state_dir / FILE
    if not path.exists():
        return []
    ledger = Ledger(path, readonly=True)
    try:
        return ledger.totals(since, until, by, tz, client)
    except LedgerError as err:
        raise AiServerError(f"{path}: {err}") from None
    finally:
        ledger.close()
