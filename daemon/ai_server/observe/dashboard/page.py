"""The whole page, rendered on the server (pure): what a browser without JavaScript shows, and
where the script (static/dashboard.js) starts from before the event stream takes over."""

from __future__ import annotations

from typing import Any

from ai_server.observe.dashboard import view
from ai_server.observe.dashboard.view import e

TITLES = {"children": "Children", "slots": "Engine slots and queue", "calling": "Who is calling now",
          "usage": "Usage", "nodes": "Nodes", "alerts": "Open alerts", "config": "Config and allowlist"}


def client_filter(clients: list[str], chosen: str | None) -> str:
    options = ['<option value="">every client</option>']
    for name in sorted(set(clients) | ({chosen} if chosen else set())):
        selected = " selected" if name == chosen else ""
        options.append(f'<option value="{e(name)}"{selected}>{e(name)}</option>')
    return ('<form id="filter" method="get" action="/"><label>client <select name="client" id="client">'
            + "".join(options) + '</select></label> <noscript><button type="submit">show</button></noscript></form>')


def render(host: str, sections: dict[str, str], rows: list[dict[str, Any]], clients: list[str],
           chosen: str | None = None) -> str:
    blocks = []
    for name in view.SECTIONS:
        wide = " wide" if name in ("usage", "config") else ""
        blocks.append(f'<section class="card{wide}"><h2>{TITLES[name]}</h2>'
                      f'<div id="{name}">{sections.get(name, "")}</div></section>')
    head = "".join(f"<th>{e(h)}</th>" for h in view.REQUEST_HEAD)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ai-server on {e(host)}</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/dashboard.js" defer></script>
</head>
<body>
<header><h1>ai-server <span class="host">{e(host)}</span></h1>
<span id="live" class="live off" title="live updates">not live: reload for the latest</span></header>
<main>
{''.join(blocks)}
<section class="card wide"><h2>Last requests</h2>{client_filter(clients, chosen)}
<div class="scroll"><table id="requests"><thead><tr>{head}</tr></thead>
<tbody id="rows">{view.requests(rows)}</tbody></table></div>
</section>
</main>
</body>
</html>
"""
