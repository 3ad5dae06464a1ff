"""What status, the control commands and /metrics make of the daemon's snapshot (pure), and the
small shared pieces children are given: the mood and the records book."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ai_server.access import clients
from ai_server.access.tailscale import Peer
from ai_server.base.errors import AiServerError
from ai_server.children.lifecycle import Snapshot as ChildSnapshot
from ai_server.children.proxy import Load
from ai_server.children.records import Book
from ai_server.children.states import DaemonMood, Mood, State
from ai_server.children.warm import Warmed
from ai_server.daemon.commands import Commands, client_rows, status_json, targets
from ai_server.desired import Desired
from ai_server.observe import metrics
from ai_server.observe.snapshot import Snapshot, Tls

ENGINE = ChildSnapshot("ollama", State.RUNNING, 12, 65.04, 1, 0, "pid 12, uptime 0:01:05")
PROXY = ChildSnapshot("haproxy", State.STOPPED, None, None, 0, 0, "waiting for a tailnet address: Tailscale is Stopped")
SNAP = Snapshot(Desired(addresses=("100.64.0.1", "fd7a:115c:a1e0::1")), (ENGINE, PROXY), pid=99,
                proxy_waiting="waiting for a tailnet address: Tailscale is Stopped", engine_listen=("127.0.0.1", 11434),
                loaded_at="2026-12-03T07:00:00Z", nodes=("local", "studio-2"),
                warm=(Warmed("qwen", "loaded", "loaded", 4.2),), audit_age_s=0.5, slots=4)
LOAD = Load(inflight=2, slots=4, queued={"interactive": 1, "normal": 0, "batch": 3}, oldest_wait_s=14.0,
            clients={"laptop": 2}, last_minute={"laptop": 14, "ci": 9}, requests_total=1234)


def test_status_json_keeps_its_shape() -> None:
    out = status_json(SNAP)
    assert json.loads(json.dumps(out)) == out  # plain JSON, nothing live in it
    assert out["children"][0] == {"name": "ollama", "state": "RUNNING", "pid": 12, "uptime_s": 65.0, "restarts": 1,
                                  "failures": 0, "description": "pid 12, uptime 0:01:05"}
    assert out["children"][1]["description"].startswith("waiting for a tailnet address")
    assert out["proxy"] == {"listen": ["100.64.0.1:11434", "[fd7a:115c:a1e0::1]:11434"],
                            "waiting": SNAP.proxy_waiting, "enabled": True, "engine_listen": "127.0.0.1:11434",
                            "rules": 0, "nodes": ["local", "studio-2"], "loaded_at": "2026-12-03T07:00:00Z",
                            "config_error": None,
                            "tailnet": {"peers": 0, "known": True, "stale_since": None, "problem": None}, "tls": None}
    assert out["warm"] == [{"model": "qwen", "state": "loaded", "detail": "loaded", "seconds": 4.2}]
    assert out["supervisor"] == {"pid": 99, "mood": "RUNNING"}
    https = status_json(replace(SNAP, tls=Tls("mymac.ts.net", None, "no certificate yet"), mood=Mood.SHUTDOWN))
    assert https["proxy"]["tls"] == {"domain": "mymac.ts.net", "not_after": None, "problem": "no certificate yet"}
    assert https["supervisor"]["mood"] == "SHUTDOWN"


def test_targets_name_children_in_start_order() -> None:
    assert targets(SNAP, "all") == ["ollama", "haproxy"]
    assert targets(SNAP, "haproxy") == ["haproxy"]
    with pytest.raises(AiServerError, match=r"no child named 'nginx' \(children: ollama, haproxy, or all\)"):
        targets(SNAP, "nginx")


def test_client_rows_from_the_policy_and_the_load() -> None:
    mac = Peer(("100.64.0.2",), "Alice's MacBook", "alices-macbook.tail1234.ts.net", "alice@example.com", (),
               "nM1", "tail1234.ts.net")
    parsed = clients.parse('[[client]]\nname = "laptop"\ndevice = "alices-macbook"\nrpm = 5\n'
                           '[[client]]\nname = "ci"\ntoken_sha256 = "' + "a" * 64 + '"\n[unknown]\npolicy = "deny"\n')
    desired = Desired(clients=parsed, peers=(mac,))
    rows = client_rows(desired, LOAD)
    assert [r["name"] for r in rows] == ["laptop", "ci", "unknown"]
    laptop, ci, unknown = rows
    assert laptop["peers"] == [{"device": "alices-macbook", "addresses": ["100.64.0.2"]}]
    assert (laptop["in_flight"], laptop["last_minute"], laptop["policy"]["rpm"]) == (2, 14, 5)
    assert ci["identity"] == {"kind": "token_sha256", "value": "a" * 12 + "..."}
    assert (ci["in_flight"], ci["last_minute"]) == (0, 9)
    assert unknown["identity"] == {"kind": "unknown", "value": "deny"}
    # HAProxy not answering: the same rows, no load.
    assert [(r["in_flight"], r["last_minute"]) for r in client_rows(desired, None)] == [(0, 0)] * 3


def test_metrics_gauges_come_from_the_snapshot_and_the_load() -> None:
    live = metrics.live(SNAP, LOAD, [])
    assert live.children == [("ollama", True, 1), ("haproxy", False, 0)]
    assert (live.slots, live.inflight, live.queued, live.oldest_wait_s) == (4, 2, LOAD.queued, 14.0)
    assert (live.clients_inflight, live.proxy_requests, live.audit_age_s) == ({"laptop": 2}, 1234, 0.5)
    assert live.warm == [("qwen", "loaded", 4.2)]
    idle = metrics.live(SNAP, None, [])
    assert (idle.inflight, idle.queued, idle.proxy_requests) == (0, {}, None)
    text = metrics.render(metrics.Recorder(), live)
    assert 'ai_server_child_up{name="haproxy"} 0' in text and "ai_server_inflight 2" in text


def test_metrics_addresses() -> None:
    tailnet = ("100.64.0.1", "fd7a:115c:a1e0::1")
    assert metrics.addresses(("127.0.0.1:9464", "tailscale", "[::1]:9000", "127.0.0.1:9464"), tailnet) == [
        ("127.0.0.1", 9464), ("100.64.0.1", 9464), ("fd7a:115c:a1e0::1", 9464), ("::1", 9000)]
    assert metrics.addresses(("tailscale",), ()) == []


def test_the_mood_only_moves_to_shutdown() -> None:
    mood = DaemonMood()
    assert mood.now is Mood.RUNNING and not mood.shutting_down
    mood.shut_down()
    mood.shut_down()
    assert mood.now is Mood.SHUTDOWN and mood.shutting_down


def test_the_book_names_only_live_children(tmp_path: Path) -> None:
    book = Book(tmp_path / "children.json")
    book.put("ollama", {"pid": 1, "create_time": 2.0, "argv": ["ollama", "serve"]})
    book.put("haproxy", None)  # not running
    written = json.loads((tmp_path / "children.json").read_text())
    assert written["children"] == {"ollama": {"pid": 1, "create_time": 2.0, "argv": ["ollama", "serve"]}}
    book.put("ollama", None)  # exited
    assert json.loads((tmp_path / "children.json").read_text())["children"] == {}
    book.close()
    assert not (tmp_path / "children.json").exists()
    memory = Book(None)
    memory.put("x", {"pid": 1})
    assert memory.entries == {"x": {"pid": 1}}


class FakeDaemon:
    """Commands need only the Daemon protocol: no supervisor, no children."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], str]] = []

    def snapshot(self) -> Snapshot:
        return SNAP

    async def load(self) -> Load | None:
        return LOAD

    async def start(self, names: list[str], reason: str) -> None:
        self.calls.append(("start", names, reason))

    async def stop(self, names: list[str], reason: str) -> None:
        self.calls.append(("stop", names, reason))

    async def restart(self, names: list[str], reason: str) -> None:
        self.calls.append(("restart", names, reason))

    async def reload(self, why: str) -> dict[str, Any]:
        return {"ok": True, "changed": []}

    async def warm(self, models: list[str], pull: bool):  # type: ignore[no-untyped-def]
        yield {"ok": True, "results": []}

    async def nodes(self, action: str | None, name: str) -> list[dict[str, Any]]:
        raise AiServerError("this ai-server fronts no nodes")


def test_commands_act_through_the_daemon_and_answer_from_its_snapshot() -> None:
    daemon = FakeDaemon()
    commands = Commands(daemon)

    async def ask(command: str, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [answer async for answer in commands.handle(command, args)]

    async def scenario() -> dict[str, list[dict[str, Any]]]:
        return {c: await ask(c, a) for c, a in (("status", {}), ("restart", {"name": "all"}), ("stop", {"name": "nginx"}),
                                                ("nodes", {}), ("frobnicate", {}))}

    answers = asyncio.run(scenario())
    assert answers["status"] == [{"ok": True, **status_json(SNAP), "load": LOAD.as_json()}]
    assert daemon.calls == [("restart", ["ollama", "haproxy"], "requested by restart")]
    assert answers["restart"][0]["children"] == status_json(SNAP)["children"]
    assert answers["stop"] == [{"ok": False, "error": "no child named 'nginx' (children: ollama, haproxy, or all)"}]
    assert answers["nodes"] == [{"ok": False, "error": "this ai-server fronts no nodes"}]
    assert answers["frobnicate"] == [{"ok": False, "error": "unknown command 'frobnicate'"}]
