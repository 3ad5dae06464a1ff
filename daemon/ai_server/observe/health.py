"""The gauges behind the alert rules (config/alerts.yml), appended to /metrics (pure): each child's
state, each node's health, a config error or certificate problem in force, and the alerts the
supervisor has open, so Prometheus can alert on exactly what the supervisor sees."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ai_server.observe.alerts import Seen
from ai_server.observe.metrics import _labels

STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")
# HAProxy's health of a node's server: anything but DOWN (and MAINT) still serves or drains.
NODE_DOWN = ("DOWN", "MAINT")


def _family(name: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge",
            *(f"{name}{_labels(labels)} {int(value)}" for labels, value in samples)]


def render(seen: Seen, open_alerts: list[dict[str, Any]]) -> str:
    lines = _family("ai_server_child_state", "1 for the state the child is in (supervisord's seven), else 0.",
                    (({"name": name, "state": s}, s == state) for name, state, _, _ in seen.children for s in STATES))
    lines += _family("ai_server_node_up", "1 while the node answers its health check (a front's [[node]]s).",
                     (({"node": name}, health not in NODE_DOWN) for name, health in seen.nodes))
    lines += _family("ai_server_config_error", "1 while a broken config file keeps the last good config in force.",
                     [({}, seen.config_error is not None)])
    lines += _family("ai_server_tls_problem", "1 while proxy.tls = \"tailscale\" has no certificate to serve.",
                     [({}, seen.tls_problem is not None)])
    lines += _family("ai_server_alert_open", "1 for each alert the supervisor has open (docs/alerts.md).",
                     (({"condition": a["condition"], "subject": a["subject"], "severity": a["severity"]}, 1)
                      for a in open_alerts))
    return "\n".join(lines) + "\n"
