"""[[node]] in ai-server.toml, and the pure half of fronting: which backend a model goes to,
which servers are ready, the union the front answers, and a fronting haproxy.cfg that the real
`haproxy -c` accepts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ai_server import config, haproxy
from ai_server.access import allowlist
from ai_server.access.clients import Clients
from ai_server.base import tomlfile
from ai_server.base.errors import ConfigError
from ai_server.fleet import nodes
from ai_server.haproxy import maps, names
from ai_server.haproxy.render import RenderInput, render

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
TWO = '[[node]]\nname = "studio-2"\nurl = "http://100.64.0.2:11434"\n[[node]]\nname = "linux.gpu"\nurl = "http://100.64.0.3:8080/"\n'


def test_nodes_are_read_in_order() -> None:
    cfg = config.parse_config('[engine]\nkind = "none"\n' + TWO)
    assert [(n.name, n.url, n.address) for n in cfg.nodes] == [
        ("studio-2", "http://100.64.0.2:11434", "100.64.0.2:11434"),
        ("linux.gpu", "http://100.64.0.3:8080", "100.64.0.3:8080")]
    assert cfg.fronting and cfg.engine.command == ()
    six = config.parse_config('[[node]]\nname = "v6"\nurl = "http://[fd7a:115c:a1e0::2]:11434"\n')
    assert six.nodes[0].address == "[fd7a:115c:a1e0::2]:11434" and six.engine.kind == "ollama"


@pytest.mark.parametrize("text, words", [
    ('[[node]]\nname = "a"\n', "missing"),
    ('[[node]]\nurl = "http://100.64.0.2:1"\n', "missing"),
    ('[[node]]\nname = "local"\nurl = "http://100.64.0.2:1"\n', "this machine's own engine"),
    ('[[node]]\nname = "a b"\nurl = "http://100.64.0.2:1"\n', "letters, digits"),
    ('[[node]]\nname = "a:backup"\nurl = "http://100.64.0.2:1"\n', "letters, digits"),
    ('[[node]]\nname = "x\\ny"\nurl = "http://100.64.0.2:1"\n', "letters, digits"),
    ('[[node]]\nname = "a"\nurl = "https://100.64.0.2:1"\n', "http://ADDRESS:PORT"),
    ('[[node]]\nname = "a"\nurl = "http://100.64.0.2"\n', "http://ADDRESS:PORT"),
    ('[[node]]\nname = "a"\nurl = "http://100.64.0.2:1/v1"\n', "http://ADDRESS:PORT"),
    ('[[node]]\nname = "a"\nurl = "http://h:1 check"\n', "http://ADDRESS:PORT"),
    ('[[node]]\nname = "a"\nurl = "http://100.64.0.2:70000"\n', "1 to 65535"),
    # HAProxy resolves names once, at start, and would hang or refuse to start without DNS.
    ('[[node]]\nname = "a"\nurl = "http://gpu.tail1234.ts.net:11434"\n', "tailscale ip -4"),
    ('[[node]]\nname = "a"\nurl = "http://100.64.0.2:1"\nweight = 3\n', "unknown key"),
    ('[[node]]\nname = "a"\nurl = "http://100.64.0.2:1"\n[[node]]\nname = "a"\nurl = "http://100.64.0.3:1"\n', "already a node"),
    ('node = "a"\n', "[[node]] tables"),
    ('[engine]\nkind = "none"\n', "only fronts others"),
    ('[proxy]\nfronts = ["front.example"]\n', "not an IP address"),
    ('[proxy]\nfronts = ["100.64.0.1\\n"]\n', "not an IP address"),
    ('[proxy]\nfronts = ["100.64.0.1 100.64.0.2"]\n', "not an IP address"),
    ('[[node]]\nname = "a"\nurl = "http://100.64.0.2:1\\n"\n', "http://ADDRESS:PORT"),
    ('[[node]]\nname = "a\\n"\nurl = "http://100.64.0.2:1"\n', "letters, digits"),
])
def test_node_errors(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match="ai-server.toml") as info:
        config.parse_config(text)
    assert words in str(info.value)


def state(name: str, models: dict[str, bool], drained: bool = False) -> nodes.NodeState:
    return nodes.NodeState(name, models=models, listed={m: m for m in models}, drained=drained)


def test_assignment_keeps_a_model_where_it_was() -> None:
    first = nodes.assign({}, {"n": {"b": True, "a": False}})
    assert first == {"a": "m0", "b": "m1"}
    second = nodes.assign(first, {"n": {"b": True, "c": True}})
    assert second == {"b": "m1", "c": "m0"}  # b stays; a's backend is free for c
    many = nodes.assign({}, {"n": {f"x{i:02d}": False for i in range(70)}}, capacity=64)
    assert len(many) == 64 and set(many.values()) == {f"m{i}" for i in range(64)}  # the rest: logged, not routed


def test_a_node_advertising_many_models_cannot_take_the_others_backends() -> None:
    """A node listing 70 names took all 64 model backends (the first 64 by name), and the models
    only honest nodes served got 404 at the front. Now each node gets its share: nothing an
    honest node serves is dropped, whether the flood came first or not. (Fails on the old
    assign, which routed the first 64 names of all of them.)"""
    flood = {f"a{i:02d}": False for i in range(70)}
    honest = {"studio-1": {"qwen2.5-coder:32b": True}, "studio-2": {"llama3:8b": False, "qwen2.5-coder:32b": False}}
    fresh = nodes.assign({}, {"flood": flood, **honest})
    assert {"qwen2.5-coder:32b", "llama3:8b"} <= set(fresh) and len(fresh) == 64
    taken = nodes.assign({}, {"flood": flood})  # the flood arrived first and holds every backend
    after = nodes.assign(taken, {"flood": flood, **honest})
    assert {"qwen2.5-coder:32b", "llama3:8b"} <= set(after) and len(after) == 64
    assert all(after[m] == taken[m] for m in after if m in taken)  # what stays routed stays where it was
    # Three nodes of 40 names each: each keeps at least a third of the room.
    three = {f"n{k}": {f"n{k}-m{i:02d}": False for i in range(40)} for k in range(3)}
    shared = nodes.assign({}, three)
    assert all(sum(m.startswith(f"n{k}-") for m in shared) >= 64 // 3 for k in range(3))


def test_loaded_nodes_are_servers_the_others_backups() -> None:
    assignment = {"qwen": "m0", "llama": "m1"}
    states = [state("a", {"qwen": True}), state("b", {"qwen": False, "llama": True}), state("c", {"llama": True}, drained=True)]
    got = nodes.server_states(assignment, states, capacity=3)
    assert got[("m0", "a")] == "ready" and got[("m0", names.backup_name("a"))] == "drain"
    assert got[("m0", "b")] == "drain" and got[("m0", names.backup_name("b"))] == "ready"
    assert got[("m1", "b")] == "ready" and got[("m1", "c")] == "drain"  # in flight finishes, nothing new
    unused = [v for (backend, _), v in got.items() if backend == "m2"]  # no model: every server, twice, takes nothing
    assert len(unused) == 6 and set(unused) == {"drain"}
    assert "maint" not in got.values()  # with shutdown-sessions, maint would cut what is in flight
    assert names.node_of("m1", names.backup_name("b")) == "b" and names.node_of("engine", "engine") is None


def test_union_lists_each_model_once_as_a_node_spells_it() -> None:
    a = nodes.NodeState("a", models={"qwen:7b": True}, listed={"qwen:7b": "qwen:7b"})
    b = nodes.NodeState("b", models={"qwen:7b": False, "llama3": False}, listed={"qwen:7b": "qwen:7b", "llama3": "Llama3"})
    answers = nodes.union([a, b])
    assert [m["id"] for m in json.loads(answers["v1"])["data"]] == ["Llama3", "qwen:7b"]
    assert json.loads(answers["list"]) == ["Llama3", "qwen:7b"]
    assert nodes.model_keys("Llama3:latest", ollama=True) == ["llama3:latest", "llama3"]
    assert nodes.model_keys('evil"name', ollama=False) == []  # never reaches a map


@pytest.mark.parametrize("cfg_text", [
    '[engine]\nkind = "none"\n' + TWO,
    '[engine]\nparallel = 2\n' + TWO,  # the front's own engine is one more node
    '[engine]\nkind = "none"\n[proxy]\ntls = "tailscale"\n' + TWO,
])
def test_fronting_config_passes_haproxy_check(tmp_path: Path, cfg_text: str) -> None:
    cfg = config.parse_config(cfg_text)
    allow = allowlist.parse(tomlfile.default_text("allowlist.toml"))
    assignment = nodes.assign({}, {"studio-2": {"qwen2.5-coder:7b": True}, "linux.gpu": {"llama3:8b": False}})
    states = [state("studio-2", {"qwen2.5-coder:7b": True}), state("linux.gpu", {"llama3:8b": False}, drained=True)]
    answers = nodes.union(states)
    files = [*maps.every_map(allow, ("100.64.0.1",), 11434, (), Clients(), (), True, ()), *maps.node_maps(assignment, answers)]
    tls = "tls" in cfg_text
    if tls:
        (tmp_path / "tls.pem").write_text(_self_signed(tmp_path))
    spec = RenderInput(cfg, ("100.64.0.1",), tls=tls,
                       node_states=tuple(sorted(nodes.server_states(assignment, states).items())),
                       node_slots=(("studio-2", 2), ("linux.gpu", 4)))
    assert haproxy.install(HAPROXY, spec, files, tmp_path)
    text = render(spec)
    assert "server studio-2 100.64.0.2:11434 check inter 500ms" in text
    assert "server linux.gpu:backup 100.64.0.3:8080 backup track node_linux.gpu/linux.gpu maxconn 4" in text
    assert ("server local unix@local.sock" in text) == (cfg.engine.kind != "none")


def _self_signed(where: Path) -> str:
    import subprocess
    key, crt = where / "k.pem", where / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "1", "-subj", "/CN=front.tail1234.ts.net"], check=True, capture_output=True)
    return crt.read_text() + key.read_text()
