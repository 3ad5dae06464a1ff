#!/usr/bin/env python3
"""What a Prometheus scrape costs: 50 clients' worth of series (each client calling several
routes and getting several codes), then repeated scrapes of /metrics, timed, with the
supervisor's own CPU time per scrape; at a 15 s interval that is its share of one core.

    .venv/bin/python bench/scrape.py [--clients 50] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ai_server.access import clients  # noqa: E402
from harness import dispose, new_stack, wait_for  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    tokens = {f"client{i:02d}": "ais_" + f"{i:043d}" for i in range(args.clients)}
    stack = new_stack()
    port = stack.metrics_port
    (stack.config_dir / "clients.toml").write_text("".join(
        f'[[client]]\nname = "{n}"\ntoken_sha256 = "{clients.token_hash(t)}"\n' for n, t in tokens.items()))
    try:
        stack.start()
        calls = [("GET", "/v1/models", None), ("GET", "/api/tags", None), ("GET", "/api/pull", None),
                 ("POST", "/v1/chat/completions", {"model": "smollm2:135m", "messages": []}),
                 ("POST", "/v1/chat/completions", {"model": "no-such:1b", "messages": []}),
                 ("GET", "/v1/models/smollm2:135m", None), ("DELETE", "/v1/models", None)]
        sent = 0
        with httpx.Client(timeout=10) as http:
            for token in tokens.values():
                for method, path, body in calls:
                    http.request(method, stack.url(path), json=body, headers={"Authorization": f"Bearer {token}"})
                    sent += 1
        wait_for(lambda: len(stack.events("request")) >= sent, what="every request logged")
        url = f"http://127.0.0.1:{port}/metrics"
        supervisor = psutil.Process(stack.proc.pid)
        samples, sizes = [], []
        with httpx.Client(timeout=10) as http:
            http.get(url)
            cpu_before = sum(supervisor.cpu_times()[:2])
            for _ in range(args.scrapes):
                started = time.perf_counter()
                text = http.get(url).text
                samples.append((time.perf_counter() - started) * 1000)
                sizes.append(len(text))
            cpu = (sum(supervisor.cpu_times()[:2]) - cpu_before) / args.scrapes
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        print(f"{args.clients} clients x {len(calls)} calls: {series} series, {sizes[-1] / 1024:.0f} KiB a scrape\n")
        print("| scrapes | p50 ms | p99 ms | max ms | supervisor CPU a scrape | share of one core at 15 s |")
        print("| --- | --- | --- | --- | --- | --- |")
        ordered = sorted(samples)
        print(f"| {args.scrapes} | {statistics.median(samples):.1f} | {ordered[int(0.99 * (len(ordered) - 1))]:.1f} | "
              f"{max(samples):.1f} | {cpu * 1000:.1f} ms | {100 * cpu / 15:.3f}% |")
        return 0
    finally:
        dispose(stack)


if __name__ == "__main__":
    sys.exit(main())
