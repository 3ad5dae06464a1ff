#!/usr/bin/env python3
"""`check`'s "proxy adds under 1 ms" on a quiet and on a busy machine: the verdict of the
paired, noise-floor judgement (check/performance.py) against the old one (the median of 20
proxied minus the median of 20 direct requests, median of 3 rounds), several runs each, on a
real ai-server in front of the Ollama stand-in. "Busy" is CPU-bound processes, two per core.

    .venv/bin/python bench/check_latency.py [--runs 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402

from ai_server.check.performance import judge, measure  # noqa: E402
from harness import dispose, new_stack  # noqa: E402

PATH = "/api/version"


def old_added(direct: str, proxied: str) -> float:
    def median_ms(url: str) -> float:
        samples = []
        with httpx.Client(timeout=10) as client:
            client.get(url)
            for _ in range(20):
                started = time.perf_counter()
                client.get(url)
                samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)
    return statistics.median(median_ms(proxied) - median_ms(direct) for _ in range(3))


def new_verdict(direct: str, proxied: str) -> tuple[str, str]:
    with httpx.Client(timeout=10) as a, httpx.Client(timeout=10) as b:
        def timer(client: httpx.Client, url: str):
            def send() -> float:
                started = time.perf_counter()
                client.get(url)
                return (time.perf_counter() - started) * 1000
            return send
        return judge(measure(timer(a, direct), timer(b, proxied)))


def burn() -> None:
    while True:
        pass


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    stack = new_stack()
    try:
        stack.start()
        direct, proxied = f"http://127.0.0.1:{stack.engine_port}{PATH}", stack.url(PATH)
        for load in ("quiet", "busy"):
            burners = [multiprocessing.Process(target=burn, daemon=True)
                       for _ in range(2 * (os.cpu_count() or 1))] if load == "busy" else []
            for proc in burners:
                proc.start()
            try:
                for run in range(args.runs):
                    old = old_added(direct, proxied)
                    outcome, detail = new_verdict(direct, proxied)
                    print(f"{load} run {run + 1}: old check {'FAIL' if old >= 1 else 'PASS'} ({old:+.3f} ms); "
                          f"new check {outcome}: {detail}", flush=True)
            finally:
                for proc in burners:
                    proc.terminate()
                    proc.join()
    finally:
        dispose(stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
