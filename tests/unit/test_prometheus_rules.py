"""config/alerts.yml under `promtool test rules`, one rule per alert condition, and the Grafana
dashboard built only on metrics ai-server exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ai_server.observe import health, metrics
from ai_server.observe.alerts import CONDITIONS, Seen

CONFIG = Path(__file__).resolve().parents[2] / "config"
RULE_OF = {"child_fatal": "AiServerChildFatal", "loopback_audit": "AiServerLoopbackAudit",
           "restart_loop": "AiServerRestartLoop", "node_down": "AiServerNodeDown", "quota_warning": "AiServerQuotaWarning",
           "quota_exhausted": "AiServerQuotaExhausted", "probing": "AiServerClientProbing",
           "config_error": "AiServerConfigError", "tls_renewal": "AiServerCertificateRenewal",
           "ledger": "AiServerLedgerUnwritable"}
# Metered by `usage` (interface.md's Metrics), and Prometheus's own.
ALSO = {"ai_server_tokens_total", "ai_server_gpu_seconds_total", "ai_server_quota_used_ratio", "up"}
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (.ci/dev test installs it)")


def exported() -> set[str]:
    live = metrics.Live(children=[("ollama", True, 1)], queued={"normal": 1}, clients_inflight={"a": 1},
                        warm=[("m", "loaded", 1.0)], audit_age_s=1.0, proxy_requests=1)
    recorder = metrics.Recorder()
    text = metrics.render(recorder, live) + health.render(Seen((("ollama", "RUNNING", 0, ""),), nodes=(("n", "UP"),)), [])
    names = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    out = {name for name, _ in names}
    out |= {f"{name}_{suffix}" for name, kind in names if kind == "histogram" for suffix in ("bucket", "sum", "count")}
    return out | ALSO


def metric_names(expr: str) -> set[str]:
    words = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b(?=\s*(?:\{|\[|\)|$| ==| >=))", expr))
    return {w for w in words if w.startswith("ai_server_") or w == "up"}


@needs_promtool
def test_the_rules_pass_promtool() -> None:
    checked = subprocess.run(["promtool", "check", "rules", "alerts.yml"], cwd=CONFIG, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(["promtool", "test", "rules", "alerts.test.yml"], cwd=CONFIG, capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_condition_has_a_rule_and_a_test() -> None:
    rules = (CONFIG / "alerts.yml").read_text()
    tests = (CONFIG / "alerts.test.yml").read_text()
    assert set(RULE_OF) == set(CONDITIONS)
    for rule in RULE_OF.values():
        assert f"alert: {rule}\n" in rules and f"alertname: {rule}\n" in tests, rule
    exprs = re.findall(r"expr: (.+)", rules)
    assert exprs and all(metric_names(e) for e in exprs)
    assert [e for e in exprs if not metric_names(e) <= exported()] == []


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    board = json.loads((CONFIG / "grafana" / "ai-server.json").read_text())
    assert board["uid"] == "ai-server" and board["__inputs"][0]["pluginId"] == "prometheus"
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert len(exprs) >= 15 and all(metric_names(e) for e in exprs)
    unknown = {name for e in exprs for name in metric_names(e)} - exported()
    assert unknown == set()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:   # the grid is 24 wide; no two panels overlap
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
