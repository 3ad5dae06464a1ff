#!/usr/bin/env python3
"""The queue under load: clients of two priorities sharing an engine with 2 slots.

Stand-in run: the Ollama stand-in with 2 slots and a fixed token rate (sleep-bound, so the
figures mean the same on 2 cores), 8 clients in closed loops (4 interactive, 4 batch), each
streaming one generation after another. Once with the queue (engine.parallel = 2: HAProxy lets
2 through and orders the rest), once without (engine.parallel = 64: everything reaches the
engine, which queues first come first served).

Real run: llama-server --parallel 2 with SmolLM2, 4 clients (2 interactive, 2 batch).

    .venv/bin/python bench/queue.py [--seconds 300] [--real-seconds 60] [--skip-real]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from stats import percentile  # noqa: E402

from ai_server.access import clients  # noqa: E402
from harness import dispose, llama_config, llama_model, new_stack, wait_for  # noqa: E402

TOKEN_DELAY, TOKENS = 0.05, 40  # 2 s a generation, 20 tokens/s a slot


def client_config(names: dict[str, str]) -> str:
    return "".join(f'[[client]]\nname = "{n}"\ntoken_sha256 = "{clients.token_hash(t)}"\npriority = "{n.rstrip("0123456789")}"\n'
                   for n, t in names.items())


def run_clients(stack: Any, names: dict[str, str], seconds: float, body: dict) -> list[dict]:
    """Closed loops: each client sends its next generation when the last one ended."""
    results: list[dict] = []
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def loop(name: str, token: str) -> None:
        with httpx.Client(timeout=600) as http:
            while time.monotonic() < stop:
                started = time.monotonic()
                first = None
                chunks = 0
                status = -1
                try:
                    with http.stream("POST", stack.url("/v1/chat/completions"), json=body,
                                     headers={"Authorization": f"Bearer {token}"}) as response:
                        status = response.status_code
                        for line in response.iter_lines():
                            if line.startswith("data: {"):
                                choices = json.loads(line[6:]).get("choices") or [{}]
                                if choices[0].get("delta", {}).get("content"):
                                    first = first or time.monotonic()
                                    chunks += 1
                except httpx.HTTPError:
                    status = -1
                with lock:
                    results.append({"client": name, "class": name.rstrip("0123456789"), "status": status,
                                    "ttft": (first - started) if first else None, "chunks": chunks,
                                    "started": started, "ended": time.monotonic()})

    threads = [threading.Thread(target=loop, args=item) for item in names.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def summarize(stack: Any, results: list[dict], seconds: float, capacity: float | None) -> dict[str, Any]:
    waits: dict[str, list[float]] = {"interactive": [], "batch": []}
    service = []
    for event in stack.events("request", path="/v1/chat/completions"):
        if event.get("queue") and event.get("t_queue_ms", -1) >= 0:
            waits.setdefault(event.get("priority") or "normal", []).append(event["t_queue_ms"] / 1000)
            if event.get("t_total_ms", -1) >= 0:
                service.append((event["t_total_ms"] - event["t_queue_ms"] - max(0, event.get("t_request_ms") or 0)) / 1000)
    ttft = {c: [r["ttft"] for r in results if r["class"] == c and r["ttft"] is not None] for c in ("interactive", "batch")}
    tokens = sum(r["chunks"] for r in results)
    peak = stack.engine_load()["peak"]
    # Generations still running at the deadline finish after it: the rate is over the whole span.
    rate = tokens / (max(r["ended"] for r in results) - min(r["started"] for r in results))
    return {"requests": len(results), "errors": sum(r["status"] != 200 for r in results), "peak": peak,
            "generation_s": sum(service) / len(service) if service else float("nan"),
            "tokens_per_s": rate, "capacity": None if capacity is None else rate / capacity,
            "wait": {c: (percentile(w, 50), percentile(w, 95)) for c, w in waits.items() if c in ttft},
            "ttft": {c: (percentile(t, 50), percentile(t, 95)) for c, t in ttft.items()}}


def stand_in(seconds: float, parallel: int) -> dict[str, Any]:
    names = {f"interactive{i}": "ais_" + chr(ord("a") + i) * 43 for i in range(4)}
    names |= {f"batch{i}": "ais_" + chr(ord("p") + i) * 43 for i in range(4)}
    # The engine has 2 slots whatever it is told; only what the proxy lets through changes.
    stack = new_stack(engine_env={"FAKE_OLLAMA_TOKEN_DELAY": str(TOKEN_DELAY), "FAKE_OLLAMA_TOKENS": str(TOKENS),
                                  "FAKE_OLLAMA_SLOTS": "2"})
    try:
        stack.write_config(stack.default_config().replace("[engine]\n", f"[engine]\nparallel = {parallel}\n")
                           .replace("[proxy]\n", "[proxy]\nqueue_timeout = 600\nqueue_max = 1000\n"))
        (stack.config_dir / "clients.toml").write_text(client_config(names))
        stack.start()
        body = {"model": "smollm2:135m", "stream": True, "messages": [{"role": "user", "content": "go"}]}
        results = run_clients(stack, names, seconds, body)
        wait_for(lambda: len(stack.events("request", path="/v1/chat/completions")) >= len(results), what="logged")
        return summarize(stack, results, seconds, capacity=2 / TOKEN_DELAY)
    finally:
        dispose(stack)


def real(seconds: float) -> dict[str, Any]:
    names = {"interactive0": "ais_" + "a" * 43, "interactive1": "ais_" + "b" * 43,
             "batch0": "ais_" + "p" * 43, "batch1": "ais_" + "q" * 43}
    stack = new_stack()
    try:
        text = llama_config(stack).replace('"--metrics"]', '"--metrics", "--parallel", "2"]')
        stack.write_config(text.replace("[proxy]\n", "[proxy]\nqueue_timeout = 600\nqueue_max = 1000\n"))
        (stack.config_dir / "clients.toml").write_text(client_config(names))
        stack.start()
        stack.wait_warm()
        body = {"model": llama_model(), "stream": True, "max_tokens": 32, "ignore_eos": True,
                "messages": [{"role": "user", "content": "Write a story about a cat"}]}
        results = run_clients(stack, names, seconds, body)
        wait_for(lambda: len(stack.events("request", path="/v1/chat/completions")) >= len(results), what="logged")
        return summarize(stack, results, seconds, capacity=None)
    finally:
        dispose(stack)


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    out = ["| run | requests | errors | engine peak | tokens/s | of capacity | one generation s | "
           "interactive wait p50 / p95 s | batch wait p50 / p95 s | interactive TTFT p50 / p95 s | batch TTFT p50 / p95 s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows:
        def pair(kind: str, cls: str, r: dict[str, Any] = r) -> str:
            p50, p95 = r[kind].get(cls, (float("nan"), float("nan")))
            return f"{p50:.2f} / {p95:.2f}"
        capacity = "—" if r["capacity"] is None else f"{100 * r['capacity']:.1f}%"
        out.append(f"| {name} | {r['requests']} | {r['errors']} | {r['peak'] if r['peak'] is not None else '—'} | "
                   f"{r['tokens_per_s']:.1f} | {capacity} | {r['generation_s']:.2f} | {pair('wait', 'interactive')} | "
                   f"{pair('wait', 'batch')} | "
                   f"{pair('ttft', 'interactive')} | {pair('ttft', 'batch')} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--real-seconds", type=float, default=60)
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    rows = [("stand-in, with the queue (parallel 2)", stand_in(args.seconds, 2)),
            ("stand-in, without (parallel 64)", stand_in(args.seconds, 64))]
    print(f"stand-in: 2 slots, {TOKENS} tokens a generation at {1 / TOKEN_DELAY:g} tokens/s a slot (one generation: "
          f"{TOKENS * TOKEN_DELAY:g} s); 4 interactive + 4 batch clients, closed loops, {args.seconds:g} s\n")
    print(table(rows))
    if not args.skip_real:
        real_rows = [("llama-server --parallel 2, with the queue", real(args.real_seconds))]
        print("\nllama-server + SmolLM2 135M: 32 tokens a generation; "
              f"2 interactive + 2 batch clients, {args.real_seconds:g} s\n")
        print(table(real_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
