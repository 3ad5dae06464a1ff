"""Several machines behind one address: real ai-server nodes (supervisor, HAProxy, the Ollama
stand-in, each with its own models) and a front ai-server (engine.kind = "none"), each in its
own network namespace with a 100.x address on one bridge. The tests call the front from the
bridge's own address, as a tailnet device would."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ai_server.access import clients
from ai_server.base import tomlfile
from ai_server.haproxy import runtime
from harness import LAN_SELF, Lan, Stack, check_report, dispose, finish, lan_stack, netns_lock, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")

MODELS = {"n1": "smollm2:135m,qwen2.5-coder:7b", "n2": "qwen2.5-coder:7b,llama3:8b"}
# What a node's proxy must allow for a front to see what it has loaded.
NODE_ALLOW = tomlfile.default_text("allowlist.toml") + '\n[[allow]]\npath = "/api/ps"\nmethods = ["GET"]\n'
LAPTOP = "ais_" + "l" * 43
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


class Fleet:
    def __init__(self, lan: Lan, front: Stack, nodes: dict[str, Stack]):
        self.lan, self.front, self.nodes = lan, front, nodes

    def post(self, model: str, stream: bool = False, **headers: str) -> httpx.Response:
        return httpx.post(self.front.url("/v1/chat/completions"), json={**CHAT, "model": model, "stream": stream},
                          headers=headers, timeout=20)

    def served_by(self, model: str) -> list[str]:
        """Which node's engine got the chats for `model`."""
        return [name for name, stack in self.nodes.items() for r in stack.engine_requests()
                if r["target"] == "/v1/chat/completions" and json.loads(r["body"]).get("model") == model]

    def health(self, node: str) -> str:
        """The front's HAProxy's own view of a node (what `nodes` shows, without a CLI round trip)."""
        rows = runtime.stats(self.front.state_dir / "haproxy.sock")
        return next(r["status"] for r in rows if r["pxname"] == f"node_{node}" and r["svname"] == node)

    def node_rows(self) -> dict[str, dict]:
        return {r["name"]: r for r in json.loads(self.front.cli("nodes", "--json").stdout)}


@pytest.fixture
def build() -> Iterator[Any]:
    """build(node_names, front_models=None): nodes (each with MODELS[name]) and a front that
    routes to them; with front_models the front keeps its own engine, one more node."""
    with netns_lock():
        yield from _build()


def _build() -> Iterator[Any]:
    lan = Lan()
    lan.destroy()
    stacks: list[Stack] = []

    def make(names: tuple[str, ...], front_models: str | None = None, front_env: dict[str, str] | None = None,
             node_unknown: str = "allow", front_clients: str = "") -> Fleet:
        lan.create(["front", *names])
        nodes = {}
        for name in names:
            stack = lan_stack(lan, name, {"FAKE_OLLAMA_MODELS": MODELS[name], "FAKE_OLLAMA_TOKENS": "10"})
            stacks.append(stack)
            stack.write_config(stack.default_config().replace("[proxy]\n", f'[proxy]\nfronts = ["{lan.address("front")}"]\n')
                               .replace("[engine]\n", "[engine]\nparallel = 2\n"))
            (stack.config_dir / "allowlist.toml").write_text(NODE_ALLOW)
            # The node's own policy for the client the front names: laptop may use smollm2 only.
            (stack.config_dir / "clients.toml").write_text(
                f'[unknown]\npolicy = "{node_unknown}"\n'
                f'[[client]]\nname = "laptop"\ntoken_sha256 = "{"0" * 64}"\nmodels = ["smollm2:*"]\n')
            stack.start()
            nodes[name] = stack
        front = lan_stack(lan, "front", {"FAKE_OLLAMA_MODELS": front_models, **(front_env or {})} if front_models else None)
        stacks.append(front)
        node_tables = "".join(f'[[node]]\nname = "{n}"\nurl = "http://{lan.address(n)}:{s.proxy_port}"\n'
                              for n, s in nodes.items())
        own = "[engine]\nparallel = 1\n" if front_models else '[engine]\nkind = "none"\n'
        front.write_config(front.default_config().replace("[engine]\n", own) + node_tables)
        (front.config_dir / "clients.toml").write_text(
            f'[[client]]\nname = "laptop"\ntoken_sha256 = "{clients.token_hash(LAPTOP)}"\n' + front_clients)
        front.start()
        fleet = Fleet(lan, front, nodes)
        expected = {*names, *(["local"] if front_models else [])}
        wait_for(lambda: (rows := fleet.node_rows()).keys() == expected
                 and all(r["state"] == "UP" and r["models"] for r in rows.values()), what="every node up with its models")
        return fleet

    try:
        yield make
    finally:
        for stack in stacks:
            dispose(stack)
        lan.destroy()


@pytest.fixture
def fleet(build: Any) -> Fleet:
    return build(("n1", "n2"))


def test_a_request_goes_to_a_node_that_has_its_model(fleet: Fleet) -> None:
    assert fleet.post("smollm2:135m").status_code == 200
    assert fleet.post("llama3:8b").status_code == 200
    assert fleet.served_by("smollm2:135m") == ["n1"] and fleet.served_by("llama3:8b") == ["n2"]
    # One both have: either may serve it, and both do under concurrent load (leastconn): the
    # four are held in flight until all four have found a node.
    for node in fleet.nodes.values():
        node.hold()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(fleet.post("qwen2.5-coder:7b", stream=True).status_code))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: sum(node.engine_load()["held"] for node in fleet.nodes.values()) == 4, what="four streams held")
    for node in fleet.nodes.values():
        node.release()
    finish(*threads)
    assert results == [200] * 4 and set(fleet.served_by("qwen2.5-coder:7b")) == {"n1", "n2"}
    missing = fleet.post("mistral:7b")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"].startswith("no node has this model (reason: node")
    assert "llama3:8b" in missing.json()["models"]
    listed = httpx.get(fleet.front.url("/v1/models"), timeout=5).json()
    assert sorted(m["id"] for m in listed["data"]) == ["llama3:8b", "qwen2.5-coder:7b", "smollm2:135m"]
    tags = httpx.get(fleet.front.url("/api/tags"), timeout=5).json()
    assert sorted(m["name"] for m in tags["models"]) == ["llama3:8b", "qwen2.5-coder:7b", "smollm2:135m"]
    events = wait_for(lambda: [e for e in fleet.front.events("request", path="/v1/chat/completions") if e["status"] == 200],
                      what="front request events")
    assert {e["node"] for e in events} == {"n1", "n2"}
    scrape = lambda: fleet.lan.run("front", "curl", "-s", f"http://127.0.0.1:{fleet.front.metrics_port}/metrics").stdout  # noqa: E731
    text = wait_for(lambda: (t := scrape()) and 'node="n2"' in t and t, what="node labels in /metrics")
    assert 'route="/v1/chat/completions",code="200",node="n1"' in text


def test_a_node_with_the_model_loaded_is_preferred(fleet: Fleet) -> None:
    # Load qwen on n2 only (its own warm-up), and wait until the front has seen it.
    assert fleet.nodes["n2"].cli("warm", "qwen2.5-coder:7b").returncode == 0
    wait_for(lambda: fleet.node_rows()["n2"]["models"].get("qwen2.5-coder:7b") is True, what="n2 has qwen loaded")
    assert fleet.node_rows()["n1"]["models"]["qwen2.5-coder:7b"] is False
    for _ in range(4):
        assert fleet.post("qwen2.5-coder:7b").status_code == 200
    assert fleet.served_by("qwen2.5-coder:7b") == ["n2"] * 4


def test_a_request_that_loads_its_model_is_not_cut_when_the_front_sees_it_loaded(fleet: Fleet) -> None:
    """The first request for a model goes to a node's backup server (has it, not loaded); once
    the front reads it loaded, that server stops taking new ones. It used to be set to maint,
    which with shutdown-sessions cut the very request that loaded the model."""
    result: dict[str, Any] = {}

    def stream() -> None:
        with httpx.stream("POST", fleet.front.url("/v1/chat/completions"), timeout=30,
                          json={**CHAT, "model": "smollm2:135m", "stream": True, "max_tokens": 40}) as response:
            result["lines"] = [line for line in response.iter_lines() if line]

    n1 = fleet.nodes["n1"]
    n1.hold()  # in flight until the front has seen the model loaded
    streamer = threading.Thread(target=stream)
    streamer.start()
    n1.wait_held(1)
    assert fleet.front.cli("reload").returncode == 0  # reads every node now: smollm2 is loaded on n1
    assert fleet.node_rows()["n1"]["models"]["smollm2:135m"] is True
    n1.release()
    finish(streamer)
    assert result["lines"][-1] == "data: [DONE]" and len(result["lines"]) == 42  # 40 tokens, the stop, [DONE]


def test_a_silent_node_leaves_and_rejoins(fleet: Fleet) -> None:
    streamed: dict[str, Any] = {}

    def stream() -> None:
        try:
            # Longer than the test's patience: only the node going away may end this stream.
            with httpx.stream("POST", fleet.front.url("/v1/chat/completions"), timeout=120,
                              json={**CHAT, "model": "llama3:8b", "stream": True}) as response:
                streamed["lines"] = [line for line in response.iter_lines()]
        except httpx.HTTPError as err:
            streamed["error"] = repr(err)

    n2 = fleet.nodes["n2"]
    n2.hold()  # the stream stays in flight on n2 until n2 goes silent under it
    streamer = threading.Thread(target=stream)
    streamer.start()
    n2.wait_held(1)
    fleet.lan.cut("n2")
    cut = time.monotonic()
    wait_for(lambda: fleet.health("n2").startswith("DOWN"), interval=0.02, what="n2 out of rotation")
    left = time.monotonic() - cut
    # The stream on the node that went away ended (with an error): held there, it would never
    # have ended by itself.
    finish(streamer)
    assert "error" in streamed or streamed["lines"][-1:] != ["data: [DONE]"]
    started = time.monotonic()
    only_there = fleet.post("llama3:8b")
    answered = time.monotonic() - started
    assert only_there.status_code == 503 and only_there.headers["retry-after"] == "5" and answered < 1.0
    assert fleet.post("qwen2.5-coder:7b").status_code == 200 and fleet.served_by("qwen2.5-coder:7b") == ["n1"]
    n2.release()
    fleet.lan.cut("n2", up=True)
    back = time.monotonic()
    wait_for(lambda: fleet.post("llama3:8b").status_code == 200, interval=0.1, what="n2 back")
    rejoined = time.monotonic() - back
    assert left < 2.0 and rejoined < 5.0, (left, rejoined)
    print(f"\nn2 out of rotation {left:.2f}s after it went silent; llama3 refused in {answered * 1000:.0f} ms; "
          f"back in {rejoined:.2f}s")


def test_who_is_calling_holds_across_the_hop(fleet: Fleet) -> None:
    # The laptop's token is the front's business; the node applies its own policy to the name.
    allowed = fleet.post("smollm2:135m", Authorization=f"Bearer {LAPTOP}")
    assert allowed.status_code == 200
    refused = fleet.post("qwen2.5-coder:7b", Authorization=f"Bearer {LAPTOP}")
    assert refused.status_code == 403 and refused.json()["client"] == "laptop" and refused.json()["reason"] == "model"
    node_events = wait_for(lambda: [e for name in ("n1", "n2") for e in fleet.nodes[name].events(
        "request", path="/v1/chat/completions")], what="the node's request event")
    assert {e["who"] for e in node_events} == {"laptop"} and {e["client"] for e in node_events} == {fleet.lan.address("front")}
    # Saying who is calling is for fronts only.
    node = fleet.nodes["n1"]
    direct = httpx.post(node.url("/v1/chat/completions"), json={**CHAT, "model": "smollm2:135m"},
                        headers={"X-Ai-Server-Client": "laptop"}, timeout=10)
    assert direct.status_code == 403 and "only a front" in direct.json()["error"]["message"]
    from_here = wait_for(lambda: [e for e in node.events("request") if e["client"] == LAN_SELF],
                         what="the refused request's event")
    assert from_here[-1]["status"] == 403 and from_here[-1]["who"] != "laptop"


def test_nodes_command_and_drain(fleet: Fleet) -> None:
    rows = fleet.node_rows()
    assert rows["n1"]["models"] == {"qwen2.5-coder:7b": False, "smollm2:135m": False}
    assert rows["n2"]["slots"] == 2 and rows["n2"]["last_error"] is None
    human = fleet.front.cli("nodes").stdout
    assert "n1" in human and "UP" in human and "smollm2:135m" in human
    n1 = fleet.nodes["n1"]
    n1.hold()  # the stream stays in flight on n1 through the drain
    streamed: list[int] = []
    long_one = threading.Thread(target=lambda: streamed.append(fleet.post("smollm2:135m", stream=True).status_code))
    long_one.start()
    n1.wait_held(1)
    assert fleet.front.cli("nodes", "drain", "n1").returncode == 0
    assert fleet.node_rows()["n1"]["state"] == "DRAIN"
    for _ in range(3):
        assert fleet.post("qwen2.5-coder:7b").status_code == 200
    assert fleet.served_by("qwen2.5-coder:7b") == ["n2"] * 3  # new ones elsewhere
    n1.release()
    finish(long_one)
    assert streamed == [200]  # the one in flight finished
    assert fleet.post("smollm2:135m").status_code == 503  # only n1 has it, and n1 is drained
    assert fleet.front.cli("nodes", "undrain", "n1").returncode == 0
    assert fleet.post("smollm2:135m").status_code == 200
    bad = fleet.front.cli("nodes", "drain", "n9")
    assert bad.returncode == 1 and "no node named 'n9'" in bad.stderr
    metrics = fleet.front.cli("status", "--json")
    assert metrics.returncode == 0


def test_the_fronts_own_engine_is_one_more_node(build: Any) -> None:
    fleet = build(("n1",), front_models="phi3:mini,smollm2:135m")
    rows = fleet.node_rows()
    assert set(rows) == {"local", "n1"} and rows["local"]["slots"] == 1
    assert rows["local"]["models"] == {"phi3:mini": False, "smollm2:135m": False}
    assert fleet.post("phi3:mini").status_code == 200  # only here
    assert fleet.post("qwen2.5-coder:7b").status_code == 200  # only on n1
    assert fleet.served_by("qwen2.5-coder:7b") == ["n1"] and fleet.served_by("phi3:mini") == []
    local = [r for r in fleet.front.engine_requests() if r["target"] == "/v1/chat/completions"]
    assert [json.loads(r["body"])["model"] for r in local] == ["phi3:mini"]
    listed = httpx.get(fleet.front.url("/v1/models"), timeout=5).json()
    assert sorted(m["id"] for m in listed["data"]) == ["phi3:mini", "qwen2.5-coder:7b", "smollm2:135m"]
    # Both answers are in; their log lines may be read in different passes over the request log.
    events = wait_for(lambda: len(e := fleet.front.events("request", path="/v1/chat/completions", status=200)) == 2 and e,
                      what="both request events")
    assert sorted(e["node"] for e in events) == ["local", "n1"]


def test_usage_by_node_on_the_front_names_the_node_that_served(build: Any) -> None:
    """The front meters what passes through it: each generation under the node that served it
    (its own engine as "local"), with the tokens that node's engine produced; the node's own
    ledger has the same request under the client the front named."""
    desk = "ais_" + "d" * 43   # not in the nodes' clients.toml: their [unknown] policy (allow) applies
    fleet = build(("n1", "n2"), front_models="phi3:mini", front_env={"FAKE_OLLAMA_TOKENS": "3"},
                  front_clients=f'[[client]]\nname = "desk"\ntoken_sha256 = "{clients.token_hash(desk)}"\n')
    # Only on n1 (the nodes let laptop use smollm2 only), only on n2, only on the front.
    for model, token in (("smollm2:135m", LAPTOP), ("llama3:8b", desk), ("llama3:8b", desk), ("phi3:mini", desk)):
        assert fleet.post(model, Authorization=f"Bearer {token}").status_code == 200
    assert fleet.served_by("smollm2:135m") == ["n1"] and fleet.served_by("llama3:8b") == ["n2", "n2"]

    def ledger(stack: Stack, *args: str) -> dict[str, dict[str, Any]]:
        result = stack.cli("usage", "--json", "--since", "1d", *args)
        assert result.returncode == 0, result.stderr
        return {row["key"]: row for row in json.loads(result.stdout)["rows"]}

    rows = wait_for(lambda: (r := ledger(fleet.front, "--by", "node")) and sum(x["requests"] for x in r.values()) == 4
                    and r, what="four requests in the front's ledger")
    engines = {"n1": fleet.nodes["n1"], "n2": fleet.nodes["n2"], "local": fleet.front}
    assert set(rows) == set(engines)
    for node, stack in engines.items():
        made = stack.produced()
        assert rows[node]["requests"] == len(made) and rows[node]["estimated"] == 0, (node, rows[node])
        assert (rows[node]["input_tokens"], rows[node]["output_tokens"]) == \
            (sum(p["input"] for p in made), sum(p["output"] for p in made)), (node, rows[node], made)
    assert rows["n2"]["output_tokens"] == 2 * 10 and rows["local"]["output_tokens"] == 3
    by_client = ledger(fleet.front)
    assert {k: r["requests"] for k, r in by_client.items()} == {"laptop": 1, "desk": 3}
    assert by_client["laptop"]["output_tokens"] == rows["n1"]["output_tokens"]
    # Each node meters it too, served by its own engine, under the client the front named when
    # the node knows that name (laptop), else as [unknown] (desk: docs/security.md).
    n2 = wait_for(lambda: ledger(fleet.nodes["n2"], "--by", "node").get("local"), what="n2's own ledger")
    assert n2["requests"] == 2 and n2["output_tokens"] == rows["n2"]["output_tokens"]
    assert set(ledger(fleet.nodes["n2"])) == {"unknown"}
    n1 = wait_for(lambda: ledger(fleet.nodes["n1"]), what="n1's own ledger")
    assert set(n1) == {"laptop"} and n1["laptop"]["output_tokens"] == rows["n1"]["output_tokens"]
    table = fleet.front.cli("usage", "--by", "node").stdout.splitlines()
    assert table[0].endswith("by node") and {"n1", "n2", "local"} <= {line.split()[0] for line in table[2:]}


def test_reload_reads_every_node_again(fleet: Fleet) -> None:
    assert fleet.post("llama3:8b").status_code == 200
    # llama3 goes from n2 (removed on the node itself, behind its proxy); the front's reload
    # sees it at once, without waiting for the next 5-second read.
    n2 = fleet.nodes["n2"]
    removed = fleet.lan.run("n2", "curl", "-s", "-X", "DELETE", f"http://127.0.0.1:{n2.engine_port}/api/delete",
                            "-d", '{"model": "llama3:8b"}')
    assert removed.returncode == 0 and "success" in removed.stdout
    assert fleet.front.cli("reload").returncode == 0
    gone = fleet.post("llama3:8b")
    assert gone.status_code == 404 and "llama3:8b" not in gone.json()["models"]


def test_check_and_status_on_a_front_without_an_engine(fleet: Fleet) -> None:
    status = fleet.front.status()
    assert status["exit"] == 0 and [c["name"] for c in status["children"]] == ["haproxy"]
    assert status["proxy"]["nodes"] == ["n1", "n2"] and status["proxy"]["engine_listen"] is None
    assert "nodes: n1, n2" in fleet.front.cli("status").stdout
    outcomes, details = check_report(fleet.front, "--skip-model-tests")
    assert "FAIL" not in outcomes.values(), details
    assert outcomes["POST /api/pull refused with 403"] == "PASS"  # the front's own allowlist
    assert outcomes["engine unreachable from the tailnet address"] == "SKIP"
    assert "only fronts" in details["engine unreachable from the tailnet address"]
    warm = fleet.front.cli("warm", "llama3:8b")
    assert warm.returncode == 1 and "warm the models on the nodes" in warm.stderr


def test_the_fronts_own_engine_restarts_without_failing_what_waits_for_it(build: Any) -> None:
    """Requests held on the front while its own engine restarts are served after, as on a
    single machine: the local node going down must not cut them (shutdown-sessions is for
    remote nodes, whose connections would otherwise hang)."""
    fleet = build(("n1",), front_models="phi3:mini", front_env={"FAKE_OLLAMA_START_DELAY": "3"})
    front = fleet.front
    assert fleet.post("phi3:mini").status_code == 200
    restart: dict[str, Any] = {}
    restarter = threading.Thread(target=lambda: restart.update(result=front.cli("restart", "ollama")))
    restarter.start()
    wait_for(lambda: front.events("hold"), what="requests held")
    during = fleet.post("phi3:mini")  # sent while the engine restarts: waits, then served
    finish(restarter)
    assert restart["result"].returncode == 0, restart["result"].stderr
    assert during.status_code == 200, during.text


GHOST = "ais_" + "g" * 43


def test_a_node_that_denies_strangers_is_still_discovered_and_judges_names_it_does_not_know(build: Any) -> None:
    """The front's discovery and health checks came as strangers: a node with [unknown] deny
    answered them 403 and was never routed to. They name themselves now ("front", believed
    from proxy.fronts only). And a client the front knows but the node does not gets the
    node's [unknown], not a free pass. (Fails on today's main: the node's models are never
    found.)"""
    fleet = build(("n1",), node_unknown="deny",
                  front_clients=f'[[client]]\nname = "ghost"\ntoken_sha256 = "{clients.token_hash(GHOST)}"\n')
    assert fleet.post("smollm2:135m", Authorization=f"Bearer {LAPTOP}").status_code == 200
    refused = fleet.post("smollm2:135m", Authorization=f"Bearer {GHOST}")
    assert refused.status_code == 403 and refused.json()["reason"] == "unknown"
    assert fleet.served_by("smollm2:135m") == ["n1"]
