"""The dashboard's sections, rendered on the server as HTML fragments (pure).

The same fragments make the page a browser without JavaScript gets and the updates the event
stream pushes, so there is one renderer and no templating in the browser. Every value that
came from outside (client and model names, node URLs, config errors, paths) is escaped here;
nothing here writes a `style` attribute or a script (the Content-Security-Policy allows neither).
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from ai_server.observe.dashboard import charts

SECTIONS = ("children", "slots", "calling", "usage", "nodes", "alerts", "config")


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


def _clock(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).astimezone().strftime("%H:%M:%S")


def _number(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else e(value)


def _table(head: Iterable[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{e(empty)}</p>'
    cells = "".join(f"<th>{e(h)}</th>" for h in head)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def children(state: dict[str, Any]) -> str:
    rows = []
    for c in state.get("children") or []:
        st = str(c.get("state"))
        rows.append(f'<tr><td>{e(c.get("name"))}</td><td><span class="state s-{e(st.lower())}">{e(st)}</span></td>'
                    f'<td class="n">{_number(c.get("restarts"))}</td><td>{e(c.get("description"))}</td></tr>')
    mood = (state.get("supervisor") or {}).get("mood")
    note = f'<p class="note">supervisor {e(mood)}</p>' if mood and mood != "RUNNING" else ""
    return _table(("child", "state", "restarts", ""), rows, "no children") + note


def slots(state: dict[str, Any]) -> str:
    load = state.get("load")
    if not load:
        return '<p class="empty">the proxy is not running: no slots to show</p>'
    used, total = int(load.get("inflight") or 0), int(load.get("slots") or 0)
    queued = load.get("queued") or {}
    parts = [f'<p class="big"><b>{used}</b> of {total} engine slots in use</p>',
             charts.meter(used, total, "slots in use"),
             "<dl class=\"queue\">"]
    for name in ("interactive", "normal", "batch"):
        parts.append(f"<dt>{name}</dt><dd>{_number(int(queued.get(name) or 0))} queued</dd>")
    parts.append("</dl>")
    if load.get("oldest_wait_s"):
        parts.append(f'<p class="note">oldest wait {_duration(load["oldest_wait_s"])}</p>')
    return "".join(parts)


def calling(rows: list[dict[str, Any]], now: float) -> str:
    out = []
    for r in rows:
        out.append(f'<tr><td>{e(r.get("who"))}</td><td>{e(r.get("model") or "")}</td><td>{e(r.get("node") or "")}</td>'
                   f'<td class="n">{_duration(max(0.0, now - float(r.get("started") or now)))}</td></tr>')
    return _table(("client", "model", "node", "elapsed"), out, "nobody is generating right now")


def request_row(r: dict[str, Any]) -> str:
    status = r.get("status")
    pending = status is None
    shown = "…" if pending else status
    kind = "pending" if pending else ("ok" if isinstance(status, int) and status < 400 else "bad")
    ttft = r.get("ttft_ms")
    duration = r.get("duration_ms")
    estimated = " ~" if r.get("estimated") else ""
    return (f'<tr id="{e(r.get("id"))}" data-who="{e(r.get("who"))}" class="{kind}">'
            f'<td>{_clock(r.get("started"))}</td><td>{e(r.get("who"))}</td><td>{e(r.get("model") or "")}</td>'
            f'<td>{e(r.get("node") or "")}</td><td class="n">{e(shown)}</td>'
            f'<td class="n">{_number(r.get("input_tokens"))}{estimated}</td>'
            f'<td class="n">{_number(r.get("output_tokens"))}{estimated}</td>'
            f'<td class="n">{_number(r.get("gpu_s"))}</td>'
            f'<td class="n">{"" if ttft is None else _number(ttft)}</td>'
            f'<td class="n">{"" if duration is None else _number(duration)}</td>'
            f'<td class="path">{e(r.get("method") or "")} {e(r.get("path") or "")}</td></tr>')


REQUEST_HEAD = ("time", "client", "model", "node", "status", "tokens in", "tokens out", "GPU s", "TTFT ms",
                "ms", "request")


def requests(rows: list[dict[str, Any]]) -> str:
    """Table body rows, in the order given."""
    return "".join(request_row(r) for r in rows)


def usage(state: dict[str, Any]) -> str:
    data = state.get("usage")
    if not data:
        return '<p class="empty">no usage recorded yet</p>'
    today = data.get("today") or []
    parts = ["<h3>today</h3>", charts.client_bars(today, "tokens", "tokens"),
             charts.client_bars(today, "gpu_seconds", "GPU-seconds")]
    days = data.get("days") or []
    if days:
        parts += ["<h3>30 days</h3>", charts.daily_columns(days, "tokens", "tokens a day"),
                  charts.daily_columns(days, "gpu_seconds", "GPU-seconds a day")]
    return "".join(parts)


def nodes(state: dict[str, Any]) -> str:
    rows = []
    for n in state.get("nodes") or []:
        models = ", ".join(f"{e(m)}{' (loaded)' if loaded else ''}" for m, loaded in (n.get("models") or {}).items())
        st = str(n.get("state"))
        rows.append(f'<tr><td>{e(n.get("name"))}</td><td><span class="state s-{e(st.lower())}">{e(st)}</span></td>'
                    f'<td class="n">{_number(n.get("in_flight"))} of {_number(n.get("slots"))}</td>'
                    f'<td>{models or "no models"}</td><td>{e(n.get("last_error") or "")}</td></tr>')
    return _table(("node", "health", "in flight", "models", "last error"), rows,
                  "one machine: no [[node]]s in ai-server.toml")


def alerts(state: dict[str, Any]) -> str:
    rows = []
    for a in state.get("alerts") or []:
        rows.append(f'<tr class="bad"><td>{e(a.get("condition"))}</td><td>{e(a.get("subject") or "")}</td>'
                    f'<td>{e(a.get("message"))}</td><td>{_clock(a.get("since"))}</td></tr>')
    return _table(("alert", "about", "", "since"), rows, "no open alerts")


def config(state: dict[str, Any]) -> str:
    proxy = state.get("proxy") or {}
    parts = []
    error = proxy.get("config_error")
    if error:
        parts.append(f'<p class="error">config error: {e(error)} '
                     '<span class="note">(the last good config stays in force)</span></p>')
    listen = ", ".join(proxy.get("listen") or []) or proxy.get("waiting") or ""
    parts.append(f'<p>proxy: {e(listen)}; allowlist loaded {e(proxy.get("loaded_at") or "")}</p>')
    rules = [f"<tr><td>{e(path)}</td><td>{e(', '.join(methods))}</td></tr>" for path, methods in state.get("allowlist") or []]
    parts.append(_table(("path", "methods"), rules, "no rules: every request is refused"))
    return "".join(parts)


def sections(state: dict[str, Any], calling_rows: list[dict[str, Any]], now: float | None = None) -> dict[str, str]:
    now = time.time() if now is None else now
    return {"children": children(state), "slots": slots(state), "calling": calling(calling_rows, now),
            "usage": usage(state), "nodes": nodes(state), "alerts": alerts(state), "config": config(state)}
