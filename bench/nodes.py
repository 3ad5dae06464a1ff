#!/usr/bin/env python3
"""Several machines behind one address: throughput with 1, 2 and 3 nodes, and what a dying node
costs the clients.

Each node is a real ai-server (supervisor, HAProxy, the Ollama stand-in) in its own network
namespace with a 100.x address; the front is another (engine.kind = "none"). The stand-in is
sleep-bound (a fixed token rate, 2 slots a node: engine.parallel = 2), so the figures mean the
same on 2 cores.

Throughput: 4 closed-loop clients per slot of the largest fleet (24), each sending one streamed
generation after another through the front, for --seconds with each fleet size.

Failover: 3 nodes with the model, 6 clients streaming short generations (0.2 s); after 5 s one node dies,
two ways: "killed" (every process on it gets SIGKILL: its address refuses connections) and
"silent" (its link goes down: packets vanish, as when a laptop lid closes). Reported from the
moment it died: the last failed request (when failures stop) and the first request served by
another node (its first byte), plus how many failed and the longest any request started after it
took.

Needs root (ip netns).

    .venv/bin/python bench/nodes.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import Lan, Stack, dispose, lan_stack, netns_lock, wait_for  # noqa: E402

MODEL = "qwen2.5-coder:7b"
TOKEN_DELAY, TOKENS = 0.05, 20       # 1 s a generation, 2 slots a node: 2 generations/s a node
SHORT_TOKENS = 4                      # failover: 0.2 s generations, so many are in flight
NODE_ALLOW = '[[allow]]\npath = "/v1/chat/completions"\nmethods = ["POST"]\n' \
             '[[allow]]\npath = "/v1/models"\nmethods = ["GET"]\n' \
             '[[allow]]\npath = "/api/tags"\nmethods = ["GET"]\n' \
             '[[allow]]\npath = "/api/ps"\nmethods = ["GET"]\n'


class Fleet:
    def __init__(self, count: int, tokens: int) -> None:
        self.lan = Lan()
        self.lan.destroy()
        self.names = [f"n{i}" for i in range(1, count + 1)]
        self.lan.create(["front", *self.names])
        self.stacks: dict[str, Stack] = {}
        try:
            for name in self.names:
                stack = lan_stack(self.lan, name, {"FAKE_OLLAMA_MODELS": MODEL, "FAKE_OLLAMA_TOKEN_DELAY": str(TOKEN_DELAY),
                                                   "FAKE_OLLAMA_TOKENS": str(tokens)})
                self.stacks[name] = stack
                stack.write_config(stack.default_config()
                                   .replace("[proxy]\n", f'[proxy]\nfronts = ["{self.lan.address("front")}"]\n'
                                                         "queue_timeout = 600\nqueue_max = 1000\n")
                                   .replace("[engine]\n", "[engine]\nparallel = 2\n"))
                (stack.config_dir / "allowlist.toml").write_text(NODE_ALLOW)
                stack.start()
            self.front = lan_stack(self.lan, "front")
            self.stacks["front"] = self.front
            tables = "".join(f'[[node]]\nname = "{n}"\nurl = "http://{self.lan.address(n)}:{self.stacks[n].proxy_port}"\n'
                             for n in self.names)
            self.front.write_config(self.front.default_config().replace("[engine]\n", '[engine]\nkind = "none"\n')
                                    .replace("[proxy]\n", "[proxy]\nqueue_timeout = 600\n") + tables)
            self.front.start()
            wait_for(self.ready, what="every node up with the model")
        except BaseException:
            self.close()
            raise

    def ready(self) -> bool:
        result = self.front.cli("nodes", "--json")
        rows = json.loads(result.stdout) if result.returncode == 0 else []
        return len(rows) == len(self.names) and all(r["state"] == "UP" and MODEL in r["models"] for r in rows)

    def close(self) -> None:
        for stack in self.stacks.values():
            dispose(stack)
        self.lan.destroy()


def closed_loops(fleet: Fleet, clients: int, until: Callable[[], bool], stream: bool) -> list[dict[str, Any]]:
    """Each client sends its next generation when the last one ended, until `until()`."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "go"}]}

    def loop() -> None:
        with httpx.Client(timeout=60) as http:
            while not until():
                started = time.monotonic()
                ok, chunks, why, first = False, 0, "", None
                try:
                    with http.stream("POST", fleet.front.url("/v1/chat/completions"), json=body) as response:
                        lines = []
                        for line in response.iter_lines():
                            if line:
                                first = first or time.monotonic()
                                lines.append(line)
                    chunks = sum(1 for line in lines if line.startswith("data: {"))
                    ok = response.status_code == 200 and (not stream or lines[-1:] == ["data: [DONE]"])
                    why = "" if ok else f"{response.status_code} {lines[-1:]}"
                except httpx.HTTPError as err:
                    ok, why = False, repr(err)
                with lock:
                    results.append({"ok": ok, "why": why, "chunks": chunks, "started": started, "first": first,
                                    "ended": time.monotonic()})

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def throughput(count: int, seconds: float, clients: int) -> dict[str, Any]:
    fleet = Fleet(count, TOKENS)
    try:
        stop = time.monotonic() + seconds
        results = closed_loops(fleet, clients, lambda: time.monotonic() >= stop, stream=True)
        span = max(r["ended"] for r in results) - min(r["started"] for r in results)
        done = [r for r in results if r["ok"]]
        served = {name: sum(1 for r in stack.engine_requests() if r["target"] == "/v1/chat/completions")
                  for name, stack in fleet.stacks.items() if name != "front"}
        return {"nodes": count, "requests": len(done), "errors": len(results) - len(done),
                "per_s": len(done) / span, "tokens_per_s": sum(r["chunks"] for r in done) / span, "served": served}
    finally:
        fleet.close()


def kill_machine(stack: Stack) -> None:
    """Everything on it, at once: the supervisor, its HAProxy and its engine."""
    assert stack.proc is not None
    root = psutil.Process(stack.proc.pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def failover(how: str) -> dict[str, Any]:
    fleet = Fleet(3, SHORT_TOKENS)
    try:
        died: list[float] = []
        stop = time.monotonic() + 15

        def die_later() -> None:
            time.sleep(5)  # the benchmark's own schedule, not synchronisation
            victim = fleet.stacks["n3"]
            died.append(time.monotonic())
            if how == "killed":
                kill_machine(victim)
            else:
                fleet.lan.cut("n3")

        killer = threading.Thread(target=die_later)
        killer.start()
        results = closed_loops(fleet, 6, lambda: time.monotonic() >= stop, stream=True)
        killer.join()
        at = died[0]
        failed = [r for r in results if not r["ok"]]
        after = [r for r in results if r["started"] >= at]
        elsewhere = min((r["first"] for r in after if r["ok"]), default=float("nan"))
        return {"how": how, "requests": len(results), "failed": len(failed),
                "cut": sum(1 for r in failed if r["started"] < at),
                "refused": sum(1 for r in failed if r["why"].startswith("503")),
                "last_failed": max((r["ended"] for r in failed), default=at) - at,
                "first_elsewhere": elsewhere - at,
                "longest_wait": max((r["ended"] - r["started"] for r in after), default=float("nan"))}
    finally:
        fleet.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    with netns_lock():     # the fleets' 100.x addresses are the tests' too
        return report(args.seconds)


def report(seconds: float) -> int:
    clients = 4 * 2 * 3
    rows = [throughput(count, seconds, clients) for count in (1, 2, 3)]
    one = rows[0]["per_s"]
    print(f"stand-in nodes: 2 slots each, {TOKENS} tokens a generation at {1 / TOKEN_DELAY:g} tokens/s a slot "
          f"(one generation: {TOKENS * TOKEN_DELAY:g} s); {clients} streaming clients in closed loops, {seconds:g} s\n")
    print("| nodes | generations | errors | generations/s | tokens/s | vs one node | served by each node |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        served = ", ".join(f"{n} {c}" for n, c in sorted(r["served"].items()))
        print(f"| {r['nodes']} | {r['requests']} | {r['errors']} | {r['per_s']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['per_s'] / one:.2f}× | {served} |")
    print(f"\nfailover: 3 nodes with the model, 6 clients, {SHORT_TOKENS * TOKEN_DELAY:g} s generations, "
          "one node dies 5 s in (times from its death)\n")
    print("| node | requests | failed | of which: in flight on it | 503 at once | last failed request | "
          "first served elsewhere | longest wait after |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for how in ("killed", "silent"):
        r = failover(how)
        print(f"| {r['how']} | {r['requests']} | {r['failed']} | {r['cut']} | {r['refused']} | "
              f"{r['last_failed'] * 1000:.0f} ms | "
              f"{r['first_elsewhere'] * 1000:.0f} ms | {r['longest_wait'] * 1000:.0f} ms |")
    print("\n(clients here retry at once, without backoff: every 503 while the node is not yet marked down counts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
