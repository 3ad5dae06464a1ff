"""Charts as plain SVG, drawn on the server (pure): no chart library, nothing to download, and
the page without JavaScript shows them too. Sizes are SVG attributes, colours CSS classes
(c0..c7 by client), so the Content-Security-Policy needs no inline style.
"""

from __future__ import annotations

import html
from typing import Any

PALETTE = 8


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _short(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}" if float(value).is_integer() or value >= 10 else f"{value:.1f}"


def colours(names: list[str]) -> dict[str, str]:
    """A stable colour class per client: sorted names, so one client keeps its colour."""
    return {name: f"c{i % PALETTE}" for i, name in enumerate(sorted(set(names)))}


def meter(value: float, total: float, label: str) -> str:
    share = 0.0 if total <= 0 else min(1.0, value / total)
    return (f'<svg class="meter" viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label="{_e(label)}">'
            f'<rect class="track" width="100" height="6"/><rect class="fill" width="{share * 100:.2f}" height="6"/></svg>')


def client_bars(rows: list[dict[str, Any]], key: str, label: str) -> str:
    """One bar per client; with a quota, the bar is the share of it used (red past 100%)."""
    rows = [r for r in rows if r.get(key)]
    if not rows:
        return f'<p class="empty">no {_e(label)} today</p>'
    top = max(float(r[key]) for r in rows)
    colour = colours([str(r.get("client")) for r in rows])
    height, gap = 18, 6
    total_h = len(rows) * (height + gap)
    out = [f'<figure><figcaption>{_e(label)} per client</figcaption>'
           f'<svg class="bars" viewBox="0 0 400 {total_h}" role="img" aria-label="{_e(label)} per client">']
    for i, r in enumerate(sorted(rows, key=lambda r: -float(r[key]))):
        y = i * (height + gap)
        value = float(r[key])
        limit = (r.get("limits") or {}).get(key)
        name = str(r.get("client"))
        if limit:
            share = value / float(limit)
            width = min(1.0, share) * 260
            over = " over" if share >= 1 else (" warn" if share >= 0.8 else "")
            out.append(f'<rect class="track" x="120" y="{y}" width="260" height="{height}"/>'
                       f'<rect class="{colour[name]}{over}" x="120" y="{y}" width="{width:.1f}" height="{height}"/>'
                       f'<text x="384" y="{y + 13}">{share * 100:.0f}% of {_short(float(limit))}</text>')
        else:
            width = 0 if top <= 0 else value / top * 260
            out.append(f'<rect class="{colour[name]}" x="120" y="{y}" width="{width:.1f}" height="{height}"/>'
                       f'<text x="{124 + width:.1f}" y="{y + 13}">{_short(value)}</text>')
        out.append(f'<text class="name" x="114" y="{y + 13}">{_e(name)}</text>')
    out.append("</svg></figure>")
    return "".join(out)


def daily_columns(rows: list[dict[str, Any]], key: str, label: str) -> str:
    """Columns per day, stacked by client, oldest day left."""
    days = sorted({str(r.get("day")) for r in rows})
    if not days:
        return ""
    per_day: dict[str, list[tuple[str, float]]] = {d: [] for d in days}
    for r in rows:
        if r.get(key):
            per_day[str(r.get("day"))].append((str(r.get("client")), float(r[key])))
    top = max((sum(v for _, v in items) for items in per_day.values()), default=0.0) or 1.0
    colour = colours([str(r.get("client")) for r in rows])
    width, chart_h = 600, 120
    step = width / max(1, len(days))
    out = [f'<figure><figcaption>{_e(label)}, by client (most {_short(top)})</figcaption>'
           f'<svg class="columns" viewBox="0 0 {width} {chart_h + 14}" role="img" aria-label="{_e(label)}">']
    for i, day in enumerate(days):
        y = float(chart_h)
        for client, value in sorted(per_day[day]):
            h = value / top * chart_h
            y -= h
            out.append(f'<rect class="{colour[client]}" x="{i * step + 1:.1f}" y="{y:.1f}" width="{max(1.0, step - 2):.1f}" '
                       f'height="{h:.1f}"><title>{_e(day)} {_e(client)}: {_short(value)}</title></rect>')
        if i % 7 == 0 or i == len(days) - 1:
            out.append(f'<text x="{i * step:.1f}" y="{chart_h + 12}">{_e(day[5:])}</text>')
    out.append("</svg>")
    out.append('<p class="legend">' + " ".join(f'<span class="key {c}">{_e(n)}</span>' for n, c in sorted(colour.items()))
               + "</p></figure>")
    return "".join(out)
