"""The dashboard's pure parts: the gate, the feed of requests, and the rendering of hostile text."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from ai_server.access.clients import parse, token_hash
from ai_server.access.tailscale import Peer
from ai_server.observe import gate
from ai_server.observe.dashboard import charts, page, view
from ai_server.observe.feed import Feed, InFlight, parse_live
from ai_server.observe.records import Ended, Started

TOKEN = "ais_" + "t" * 43
CLIENTS = parse(f"""
[[client]]
name = "boss"
device = "boss-mac"
admin = true

[[client]]
name = "kid"
device = "kids-ipad"

[[client]]
name = "ops"
token_sha256 = "{token_hash(TOKEN)}"
admin = true
""")
PEERS = (Peer(("100.64.0.2",), "Boss Mac", "boss-mac.tail1.ts.net", "a@x", (), "nB1", "tail1.ts.net"),
         Peer(("100.64.0.3",), "Kids iPad", "kids-ipad.tail1.ts.net", "b@x", (), "nK1", "tail1.ts.net"))
AUDIENCE = gate.Audience(CLIENTS, PEERS, ("mymac.tail1.ts.net", "mymac"))
TAILNET = ("100.64.0.1", 9464)
LOOPBACK = ("127.0.0.1", 9464)


def judge(peer: str, local: tuple[str, int] = TAILNET, host: str | None = "100.64.0.1:9464",
          authorization: str | None = None, api_key: str | None = None) -> gate.Verdict:
    return gate.judge(host, peer, local, authorization, api_key, AUDIENCE)


def test_admin_is_per_client_and_not_a_default() -> None:
    assert CLIENTS.named("boss").admin and not CLIENTS.named("kid").admin
    try:
        parse("[defaults]\nadmin = true\n")
    except Exception as err:  # every device would be an admin: refused, naming the key
        assert "admin" in str(err) and ":2" in str(err)
    else:
        raise AssertionError("[defaults] admin accepted")


def test_only_admins_from_the_tailnet() -> None:
    assert judge("100.64.0.2").status == 200
    assert judge("100.64.0.3").status == 403     # a client, not an admin
    assert judge("100.64.0.9").status == 403     # nobody's device
    assert judge("100.64.0.9", authorization=f"Bearer {TOKEN}").status == 200
    assert judge("100.64.0.9", api_key=TOKEN).who == "ops"
    assert judge("100.64.0.2", authorization="Bearer ais_" + "x" * 43).status == 401
    assert judge("100.64.0.2", authorization="Bearer " + TOKEN, api_key="ais_" + "y" * 43).status == 401
    assert judge("100.64.0.2", authorization="Bearer dummy").status == 200   # an SDK's dummy key is no token
    assert judge("100.64.0.2", authorization=f"Bearer {TOKEN}\nBearer x").status == 401


def test_peer_addresses_count_on_a_tailnet_listener_only() -> None:
    assert judge("100.64.0.2", local=("192.168.1.5", 9464), host="192.168.1.5:9464").status == 403
    assert judge("127.0.0.1", local=LOOPBACK, host="127.0.0.1:9464").status == 200
    # Loopback both ways only: a listener elsewhere never trusts a caller's claim to be local.
    assert judge("127.0.0.1", local=("192.168.1.5", 9464), host="192.168.1.5").status == 403


def test_host_check() -> None:
    ok = ["100.64.0.1", "100.64.0.1:9464", "mymac", "MYMAC.tail1.ts.net.", "mymac.tail1.ts.net:9464"]
    bad = ["evil.com", "100.64.0.1:80", "localhost", "100.64.0.2", "mymac.evil.com", "", None, "a b", "[100.64.0.1]x",
           "100.64.0.1:9464\n100.64.0.1"]
    assert all(gate.host_ok(h, TAILNET, AUDIENCE) for h in ok)
    assert not any(gate.host_ok(h, TAILNET, AUDIENCE) for h in bad)
    assert gate.host_ok("localhost:9464", LOOPBACK, AUDIENCE) and gate.host_ok("[::1]:9464", ("::1", 9464), AUDIENCE)
    assert judge("100.64.0.2", host="evil.com").status == 421


def ended(address: str, port: int, status: int, client: str = "unknown", id: str = "", **metered: object) -> Ended:
    return Ended(id=id, client=client, address=address, port=port, method="POST", path="/v1/chat/completions",
                 query=None, route="/v1/chat/completions", model=None, node=None, priority=None, status=status,
                 received_at=999.0, ended_at=1000.0, forwarded=True, queued=True, bytes_in=1, bytes_out=1,
                 termination="----", t_request_ms=0, t_queue_ms=0, t_connect_ms=0, t_response_ms=40, t_total_ms=900,
                 **metered)  # type: ignore[arg-type]


def test_feed_ties_a_generation_to_its_record_by_address_and_port() -> None:
    now = [1000.0]
    feed = Feed(keep=3, clock=lambda: now[0])
    item = parse_live("laptop|smollm2:135m|999500|100.64.0.2|50000")
    assert item == InFlight("laptop", "smollm2:135m", 999.5, "100.64.0.2", 50000)
    assert parse_live("a|b|c|d") is None and parse_live("a|b|x|d|1") is None
    feed.in_flight([item])
    assert [r["who"] for r in feed.calling()] == ["laptop"]
    row = feed.changed()[0]
    assert row["status"] is None
    feed.in_flight([item])
    assert feed.changed() == []
    done = feed.ended(ended("100.64.0.2", 50000, 200, "laptop", input_tokens=5, output_tokens=8, gpu_s=0.9,
                            ttft_ms=120.0, usage_source="engine"))
    assert done["id"] == row["id"] and done["status"] == 200 and done["output_tokens"] == 8 and done["ttft_ms"] == 120.0
    assert done["model"] == "smollm2:135m"      # the live table's, the record having none
    assert feed.calling() == []
    feed.in_flight([item])  # still counted a moment after its record: not a new generation
    assert feed.calling() == []
    for port in (1, 2, 3):
        feed.ended(ended("100.64.0.9", port, 403))
    assert len(feed.rows) == 3 and row["id"] not in feed.rows
    assert feed.recent()[0]["ttft_ms"] == 40 and feed.recent()[0]["input_tokens"] is None   # not metered


def test_started_records_take_over_from_the_live_table() -> None:
    feed = Feed(clock=lambda: 1000.0)
    feed.record(Started("req-1", "laptop", "smollm2:135m", "studio-1", "/v1/chat/completions", "normal", 999.0))
    feed.in_flight([InFlight("laptop", "smollm2:135m", 999.0, "100.64.0.2", 5)])   # the same request: not twice
    assert [(r["who"], r["node"]) for r in feed.calling()] == [("laptop", "studio-1")]
    feed.record(ended("100.64.0.2", 5, 200, "laptop", id="req-1"))
    assert feed.calling() == [] and len(feed.rows) == 1 and feed.recent()[0]["status"] == 200


def test_a_generation_whose_record_never_comes_is_closed() -> None:
    now = [1000.0]
    feed = Feed(clock=lambda: now[0])
    feed.in_flight([InFlight("a", None, 999.0, "100.64.0.2", 1)])
    feed.in_flight([])
    now[0] += 10
    feed.in_flight([])
    assert feed.calling() == [] and feed.recent()[0]["status"] == "unlogged"


HOSTILE = '<script>alert(1)</script>"\'><img src=x onerror=alert(1)>&amp;'


def test_hostile_text_is_escaped_everywhere() -> None:
    state = {
        "children": [{"name": HOSTILE, "state": HOSTILE, "restarts": 0, "description": HOSTILE}],
        "load": {"inflight": 1, "slots": 2, "queued": {"normal": 1}},
        "nodes": [{"name": HOSTILE, "state": "UP", "models": {HOSTILE: True}, "in_flight": 0, "slots": 1,
                   "last_error": HOSTILE}],
        "alerts": [{"condition": HOSTILE, "subject": HOSTILE, "message": HOSTILE, "since": 0}],
        "proxy": {"config_error": HOSTILE, "listen": [HOSTILE], "loaded_at": HOSTILE},
        "allowlist": [(HOSTILE, [HOSTILE])],
        "usage": {"today": [{"client": HOSTILE, "tokens": 10, "gpu_seconds": 1.5, "limits": {"tokens": 8}}],
                  "days": [{"day": HOSTILE, "client": HOSTILE, "tokens": 3, "gpu_seconds": 1}]},
    }
    rows = [{"id": HOSTILE, "who": HOSTILE, "model": HOSTILE, "node": HOSTILE, "status": HOSTILE, "path": HOSTILE,
             "method": HOSTILE, "started": 0}]
    sections = view.sections(state, rows, now=10)
    text = page.render(HOSTILE, sections, rows, [HOSTILE], HOSTILE)
    tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            tags.append((tag, attrs))

    Tags().feed(text)
    assert [attrs for tag, attrs in tags if tag == "script"] == [[("src", "/static/dashboard.js"), ("defer", None)]]
    assert not [tag for tag, _ in tags if tag in ("img", "iframe", "object", "style", "base", "meta") and tag != "meta"]
    assert not [(tag, name) for tag, attrs in tags for name, _ in attrs if name.startswith("on") or name == "style"]
    assert "&lt;script&gt;" in text


def test_charts_draw_quota_shares() -> None:
    svg = charts.client_bars([{"client": "a", "tokens": 90, "limits": {"tokens": 100}},
                              {"client": "b", "tokens": 150, "limits": {"tokens": 100}},
                              {"client": "c", "tokens": 10}], "tokens", "tokens")
    assert "90% of 100" in svg and "150% of 100" in svg and 'class="c1 over"' in svg and 'class="c0 warn"' in svg
    assert "style=" not in svg
    assert charts.client_bars([], "tokens", "tokens").startswith('<p class="empty">')


def test_the_usage_section_reads_today_and_30_days_from_the_ledger(tmp_path: Any) -> None:
    from dataclasses import replace
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from ai_server.observe.dashboard import usage
    from ai_server.observe.records import ENGINE
    from ai_server.observe.usage.ledger import Ledger

    paris = ZoneInfo("Europe/Paris")
    base = ended("100.64.0.2", 1, 200, "laptop", input_tokens=10, output_tokens=5, gpu_s=1.5, usage_source=ENGINE)

    def at(when: str, client: str, tokens: int) -> Ended:
        t = datetime.fromisoformat(when).timestamp()
        return replace(base, client=client, received_at=t - 1, ended_at=t, input_tokens=tokens, output_tokens=0)

    ledger = Ledger(tmp_path / "usage.sqlite")
    ledger.add([at("2026-12-02T10:00:00+01:00", "laptop", 100), at("2026-12-02T11:00:00+01:00", "kid", 900),
                at("2026-11-20T10:00:00+01:00", "laptop", 40), at("2026-10-01T10:00:00+01:00", "laptop", 7)],
               paris, "spool", 1)
    now = datetime.fromisoformat("2026-12-02T12:00:00+01:00").timestamp()
    shown = usage.read(ledger, now, paris, {"kid": {"tokens": 1000, "gpu_seconds": 0}})
    assert sorted((r["client"], r["tokens"], r["limits"]) for r in shown["today"]) == [
        ("kid", 900, {"tokens": 1000}), ("laptop", 100, {})]
    assert sorted((r["day"], r["client"], r["tokens"]) for r in shown["days"]) == [
        ("2026-11-20", "laptop", 40), ("2026-12-02", "kid", 900), ("2026-12-02", "laptop", 100)]   # not October
    section = view.usage({"usage": shown})
    assert "90% of 1.0k" in section and "kid" in section and "11-20" in section


def test_the_dashboard_command_prints_the_loopback_url_first() -> None:
    from ai_server.cli import dashboard_url
    from ai_server.config import parse_config

    def url(listen: str, name: str | None = "mymac.tail1.ts.net") -> str | None:
        return dashboard_url(parse_config(f"[metrics]\nlisten = {listen}\n"), lambda: name)

    assert url('["127.0.0.1:9464"]') == "http://127.0.0.1:9464/"
    assert url('["tailscale", "192.168.1.5:9000", "[::1]:9464"]') == "http://[::1]:9464/"
    assert url('["192.168.1.5:9000"]') == "http://192.168.1.5:9000/"
    assert url('["tailscale"]') == "http://mymac.tail1.ts.net:9464/"
    assert url('["tailscale"]', None) is None
