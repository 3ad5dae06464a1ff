"""`ai-server usage` as a real subprocess, reading a ledger in a state dir (it needs no
supervisor): CSV, JSON and table, each grouping, --client, the --since forms, and a bad --since
as one line and exit 1. The ledger is written by the ledger's own writer with requests that
ended at chosen times (an hour, three days, ten days ago), so each window's sums are known."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ai_server.observe.records import Ended
from ai_server.observe.usage.ledger import FILE, Ledger
from harness import one_line_failure

HOUR, DAY = 3600, 86400


@dataclass(frozen=True)
class Seeded:
    client: str
    model: str
    node: str | None
    ago: float          # seconds before the test started
    input_tokens: int
    output_tokens: int
    gpu_s: float
    estimated: bool = False
    status: int = 200


NOW = time.time()
# Two in the last hour, one three days ago, one ten days ago, one forty days ago (past the
# hourly rows' 35 days); an error and an estimate among them.
SEEDED = (
    Seeded("laptop", "smollm2:135m", None, 0.5 * HOUR, 100, 20, 1.5),
    Seeded("phone", "smollm2:135m", None, 0.6 * HOUR, 30, 7, 0.25, estimated=True),
    Seeded("laptop", "qwen3:0.6b", "gpu-box", 3 * DAY, 200, 50, 4.0),
    Seeded("phone", "qwen3:0.6b", None, 10 * DAY, 40, 0, 0.0, status=500),
    Seeded("laptop", "smollm2:135m", None, 40 * DAY, 1000, 300, 9.0),
)


def ended(s: Seeded, n: int) -> Ended:
    at = NOW - s.ago
    return Ended(id=f"r{n}", client=s.client, address="100.64.0.9", port=40000 + n, method="POST",
                 path="/v1/chat/completions", query=None, route="/v1/chat/completions", model=s.model, node=s.node,
                 priority=None, status=s.status, received_at=at - 1, ended_at=at, forwarded=True, queued=True,
                 bytes_in=100, bytes_out=200, termination="----", t_request_ms=0, t_queue_ms=0, t_connect_ms=0,
                 t_response_ms=10, t_total_ms=1000, input_tokens=s.input_tokens, output_tokens=s.output_tokens,
                 gpu_s=s.gpu_s, ttft_ms=40.0, usage_source="estimated" if s.estimated else "engine",
                 estimated_reason="the engine reported no counts" if s.estimated else None)


@dataclass(frozen=True)
class Home:
    config_dir: Path
    state_dir: Path

    def usage(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "AI_SERVER_STATE_DIR": str(self.state_dir), "TZ": "UTC"}
        return subprocess.run([sys.executable, "-m", "ai_server", "--config-dir", str(self.config_dir), "usage", *args],
                              env=env, capture_output=True, text=True, timeout=60)

    def rows(self, *args: str) -> dict[str, dict[str, Any]]:
        result = self.usage("--json", *args)
        assert result.returncode == 0 and not result.stderr, result.stderr
        return {row["key"]: row for row in json.loads(result.stdout)["rows"]}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    root = tmp_path_factory.mktemp("usage-cli")
    config_dir, state_dir = root / "cfg", root / "state"
    config_dir.mkdir()
    state_dir.mkdir()
    (config_dir / "ai-server.toml").write_text('[usage]\ntimezone = "UTC"\n')
    from zoneinfo import ZoneInfo
    ledger = Ledger(state_dir / FILE)
    ledger.add([ended(s, n) for n, s in enumerate(SEEDED)], ZoneInfo("UTC"), "seed", 0)
    ledger.close()
    yield Home(config_dir, state_dir)


def expected(keep: Any, key: Any) -> dict[str, dict[str, Any]]:
    """What the seeded requests `keep` selects sum to, grouped by `key`."""
    out: dict[str, dict[str, Any]] = {}
    for s in SEEDED:
        if keep(s):
            row = out.setdefault(key(s), {"requests": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0,
                                          "gpu_seconds": 0.0, "estimated": 0})
            row["requests"] += 1
            row["errors"] += s.status >= 400
            row["input_tokens"] += s.input_tokens
            row["output_tokens"] += s.output_tokens
            row["gpu_seconds"] = round(row["gpu_seconds"] + s.gpu_s, 3)
            row["estimated"] += s.estimated
    return out


def sums(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: {c: r[c] for c in ("requests", "errors", "input_tokens", "output_tokens", "gpu_seconds", "estimated")}
            for k, r in rows.items()}


def within(seconds: float) -> Any:
    return lambda s: s.ago < seconds


def by_client(s: Seeded) -> str:
    return s.client


def test_json_by_client_is_the_last_24_hours_by_default(home: Home) -> None:
    result = home.usage("--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["by"] == "client" and data["since"].endswith("Z") and data["until"].endswith("Z")
    since, until = (datetime.fromisoformat(data[k].replace("Z", "+00:00")).timestamp() for k in ("since", "until"))
    assert abs(until - since - DAY) <= 1
    rows = {row["key"]: row for row in data["rows"]}
    assert sums(rows) == expected(within(DAY), by_client)
    assert [row["key"] for row in data["rows"]] == ["laptop", "phone"]   # largest first
    assert rows["laptop"]["ttft_p50_ms"] is not None and rows["laptop"]["cut"] == 0


@pytest.mark.parametrize(("since", "keep"), [("24h", within(DAY)), ("7d", within(7 * DAY)), ("90m", within(HOUR)),
                                             ("2w", within(14 * DAY)), ("60d", within(60 * DAY))])
def test_since_as_a_time_ago(home: Home, since: str, keep: Any) -> None:
    assert sums(home.rows("--since", since)) == expected(keep, by_client)


def test_since_as_a_date_and_a_date_and_time(home: Home) -> None:
    """A date counts from its local midnight; a date and time from that moment (here UTC)."""
    five_days = datetime.fromtimestamp(NOW - 5 * DAY, UTC)
    day = five_days.strftime("%Y-%m-%d")
    midnight = datetime.fromisoformat(day + "T00:00:00+00:00").timestamp()
    assert sums(home.rows("--since", day)) == expected(lambda s: NOW - s.ago >= midnight, by_client)
    moment = datetime.fromtimestamp(NOW - 2 * DAY, UTC).strftime("%Y-%m-%dT%H:%M")
    assert sums(home.rows("--since", moment)) == expected(within(2 * DAY), by_client)
    assert sums(home.rows("--since", "2000-01-01")) == expected(lambda s: True, by_client)


def test_client_shows_only_that_client(home: Home) -> None:
    rows = home.rows("--since", "60d", "--client", "phone")
    assert sums(rows) == expected(lambda s: s.client == "phone", by_client)
    by_model = home.rows("--since", "60d", "--client", "laptop", "--by", "model")
    assert sums(by_model) == expected(lambda s: s.client == "laptop", lambda s: s.model)
    assert home.rows("--since", "60d", "--client", "nobody") == {}


@pytest.mark.parametrize(("by", "key"), [
    ("model", lambda s: s.model),
    ("node", lambda s: s.node or "local"),
    ("day", lambda s: datetime.fromtimestamp(NOW - s.ago, UTC).strftime("%Y-%m-%d")),
    ("hour", lambda s: datetime.fromtimestamp(NOW - s.ago, UTC).strftime("%Y-%m-%dT%H:00")),
])
def test_by_each_grouping(home: Home, by: str, key: Any) -> None:
    result = home.usage("--json", "--since", "30d", "--by", by)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["by"] == by
    rows = {row["key"]: row for row in data["rows"]}
    assert sums(rows) == expected(within(30 * DAY), key)
    if by in ("day", "hour"):
        assert [r["key"] for r in data["rows"]] == sorted(rows)   # in time order


def test_csv_has_a_header_and_the_same_sums(home: Home) -> None:
    result = home.usage("--csv", "--since", "30d", "--by", "model")
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(table[0]) == ["model", "requests", "errors", "input_tokens", "output_tokens", "gpu_seconds",
                              "estimated", "cut", "queue_seconds", "ttft_p50_ms", "ttft_p95_ms"]
    got = {r["model"]: {"requests": int(r["requests"]), "errors": int(r["errors"]), "input_tokens": int(r["input_tokens"]),
                        "output_tokens": int(r["output_tokens"]), "gpu_seconds": float(r["gpu_seconds"]),
                        "estimated": int(r["estimated"])} for r in table}
    assert got == expected(within(30 * DAY), lambda s: s.model)
    # A group without a time to first token (the error) leaves its cell empty, not "None".
    assert all(r["ttft_p50_ms"] != "None" for r in table)


def test_the_table_has_a_total_line(home: Home) -> None:
    result = home.usage("--since", "30d")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("usage from ") and lines[0].endswith("by client")
    total = next(line.split() for line in lines if line.startswith("total"))
    want = expected(within(30 * DAY), by_client)
    assert total[1:5] == [str(sum(r[c] for r in want.values())) for c in ("requests", "errors", "input_tokens",
                                                                          "output_tokens")]


def test_no_ledger_yet_is_said_not_an_error(home: Home, tmp_path: Path) -> None:
    empty = Home(home.config_dir, tmp_path)
    result = empty.usage()
    assert result.returncode == 0 and "nothing metered" in result.stdout, result
    assert json.loads(empty.usage("--json").stdout)["rows"] == []


@pytest.mark.parametrize("since", ["yesterday", "24", "-5h", "7 d", "2026-13-45", "", "999999w", "1e9h"])
def test_a_bad_since_is_one_line_and_exit_1(home: Home, since: str) -> None:
    line = one_line_failure(home.usage(f"--since={since}"))
    assert "--since" in line and repr(since) in line, line


def test_json_and_csv_together_are_refused(home: Home) -> None:
    result = home.usage("--json", "--csv")
    assert result.returncode == 2 and "not allowed with" in result.stderr and "Traceback" not in result.stderr
