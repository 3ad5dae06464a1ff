#!/usr/bin/env python3
"""What open dashboards cost: the supervisor's CPU with 0 and 5 pages open, at idle and at 50
requests a second, and the proxy's latency (bench/latency.py's request) without and with 5 pages.

A page costs the supervisor its event stream (the browser's own work is the browser's), so each
page here is a reader of /events, as a browser's EventSource is. The load is short generations
(the Ollama stand-in, 4 tokens) through the proxy at a steady 50 a second, each logged, recorded
and pushed to the open pages as a row. CPU is the supervisor process's own (user + system), as a
share of one core, over each window.

    .venv/bin/python bench/dashboard.py [--seconds 30] [--requests 4000]
"""

from __future__ import annotations

import argparse
import http.client
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# bench/queue.py would shadow the standard library's queue (httpx's threads import it): bench/ goes last.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH] + [str(BENCH)]
sys.path.insert(0, str(ROOT / "tests"))

from stats import percentile  # noqa: E402

from harness import PROXY_HOST, dispose, new_stack  # noqa: E402

CHAT = {"model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}]}


class Pages:
    """n readers of /events, like n open dashboards."""

    def __init__(self, url: str, n: int) -> None:
        self.stop, self.received, self.threads = threading.Event(), [0] * n, []
        for i in range(n):
            thread = threading.Thread(target=self._read, args=(url, i), daemon=True)
            thread.start()
            self.threads.append(thread)
        deadline = time.monotonic() + 10
        while min(self.received, default=1) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    def _read(self, url: str, i: int) -> None:
        with httpx.stream("GET", url, timeout=None) as events:
            for chunk in events.iter_bytes():
                self.received[i] += len(chunk)
                if self.stop.is_set():
                    return

    def close(self) -> None:
        self.stop.set()


class Load:
    """Short generations through the proxy at a steady rate."""

    def __init__(self, url: str, rate: float) -> None:
        self.stop, self.sent, self.failed = threading.Event(), 0, 0
        self.thread = threading.Thread(target=self._run, args=(url, rate), daemon=True)
        self.thread.start()

    def _run(self, url: str, rate: float) -> None:
        with httpx.Client(timeout=30) as client:
            start = time.monotonic()
            while not self.stop.is_set():
                wait = start + self.sent / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self.failed += client.post(url, json=CHAT).status_code != 200
                self.sent += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def supervisor_cpu(proc: psutil.Process, seconds: float) -> float:
    """The supervisor's CPU over `seconds`, in % of one core."""
    before, started = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, took = proc.cpu_times(), time.monotonic() - started
    return 100 * ((after.user - before.user) + (after.system - before.system)) / took


def latencies(port: int, count: int) -> list[float]:
    conn = http.client.HTTPConnection(PROXY_HOST, port)
    out = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request("GET", "/api/version")
        response = conn.getresponse()
        response.read()
        out.append((time.perf_counter() - started) * 1000)
    conn.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0, help="each CPU window")
    parser.add_argument("--requests", type=int, default=4000, help="latency requests each way")
    args = parser.parse_args()
    stack = new_stack(engine_env={"FAKE_OLLAMA_TOKENS": "4"})
    port = stack.metrics_port
    try:
        stack.start()
        proc = psutil.Process(stack.proc.pid)  # type: ignore[union-attr]
        events = f"http://127.0.0.1:{port}/events"
        chat = stack.url("/v1/chat/completions")
        print(f"supervisor pid {proc.pid}; {args.seconds:g} s a window")
        rows = []
        for label, pages, rate in (("idle", 0, 0), ("idle", 5, 0), ("50 requests/s", 0, 50), ("50 requests/s", 5, 50)):
            load = Load(chat, rate) if rate else None
            time.sleep(2)   # the load settled
            open_pages = Pages(events, pages) if pages else None
            cpu = supervisor_cpu(proc, args.seconds)
            pushed = sum(open_pages.received) if open_pages else 0
            if open_pages:
                open_pages.close()
            if load:
                load.close()
            rows.append((label, pages, cpu, pushed, load.sent if load else 0, load.failed if load else 0))
            print(f"  {label}, {pages} pages: supervisor {cpu:.2f}% of a core"
                  + (f", {pushed / 1024:.0f} KiB pushed" if pages else "")
                  + (f", {load.sent} requests, {load.failed} failed" if load else ""), flush=True)
        print()
        print("| load | pages open | supervisor CPU (% of a core) | added by the pages |")
        print("| --- | --- | --- | --- |")
        for i, (label, pages, cpu, _, _, _) in enumerate(rows):
            added = "—" if pages == 0 else f"+{cpu - rows[i - 1][2]:.2f}"
            print(f"| {label} | {pages} | {cpu:.2f} | {added} |")

        # The proxy's latency, without and with 5 pages, alternating so drift hits both.
        latencies(stack.proxy_port, 500)   # warm
        without: list[float] = []
        with_pages: list[float] = []
        for _ in range(4):
            without += latencies(stack.proxy_port, args.requests // 4)
            open_pages = Pages(events, 5)
            with_pages += latencies(stack.proxy_port, args.requests // 4)
            open_pages.close()
        print()
        print("| GET /api/version through the proxy | p50 ms | p99 ms |")
        print("| --- | --- | --- |")
        for label, values in (("no page open", without), ("5 pages open", with_pages)):
            print(f"| {label} | {percentile(values, 50):.3f} | {percentile(values, 99):.3f} |")
        return 0
    finally:
        dispose(stack)


if __name__ == "__main__":
    sys.exit(main())
