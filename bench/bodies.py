#!/usr/bin/env python3
"""What request bodies cost HAProxy's memory: N connections at once, each sending the largest
body proxy.max_body_mb allows, from a caller [unknown] denies and from one it allows; HAProxy's
resident memory (every process of it, summed) before, at the peak, and once they have all
left. Then the worst scans a client can cause: a body of tiny strings (each one a turn of the
model check's loop), and bodies that are one long string of escapes (a key, a prompt), as large
as allowed, their model key last; and --escaped of those escaped keys at once.

    .venv/bin/python bench/bodies.py [--connections 64] [--max-body-mb 64] [--escaped 12] [--rounds 32]
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import PROXY_HOST, Stack, dispose, new_stack, wait_for  # noqa: E402


def haproxy_rss(stack: Stack) -> int:
    """Resident bytes of every HAProxy process of this stack."""
    total = 0
    for proc in stack.descendants():
        try:
            if proc.name() == "haproxy":
                total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def body_of(size: int, model: str = "smollm2:135m") -> bytes:
    """A chat request of exactly `size` bytes: one long prompt, the model key last."""
    head, tail = b'{"messages":[{"role":"user","content":"', ('"}],"model":"' + model + '"}').encode()
    return head + b"x" * (size - len(head) - len(tail)) + tail


def tiny_strings(size: int, model: str = "smollm2:135m") -> bytes:
    """As many tiny strings as fit in `size` bytes: the most work for the model check per byte."""
    one = b'{"role":"user","content":"ab"},'
    head, tail = b'{"messages":[', ('{}],"model":"' + model + '"}').encode()
    count = (size - len(head) - len(tail)) // len(one)
    return head + one * count + tail


def escaped_key(size: int, model: str = "smollm2:135m") -> bytes:
    """One key of nothing but \\u0041 escapes: one token of the scan, all unescaping."""
    tail = ('":1,"model":"' + model + '"}').encode()
    return b'{"' + b"\\u0041" * ((size - 2 - len(tail)) // 6) + tail


def escaped_prompt(size: int, model: str = "smollm2:135m") -> bytes:
    """One prompt of nothing but escaped quotes."""
    head, tail = b'{"messages":[{"role":"user","content":"', ('"}],"model":"' + model + '"}').encode()
    return head + b'\\"' * ((size - len(head) - len(tail)) // 2) + tail


def escaped_pairs(size: int, model: str = "smollm2:135m") -> bytes:
    """Pairs of an escaped "model" key and 256 lone-surrogate escapes: short strings, each all
    unescaping (between two of the clock's questions when it counted tokens alone)."""
    pair = b'"\\u006d\\u006f\\u0064\\u0065\\u006c":"' + b"\\ud83d" * 256 + b'",'
    tail = ('"model":"' + model + '"}').encode()
    return b"{" + pair * ((size - 1 - len(tail)) // len(pair)) + tail


def send(stack: Stack, body: bytes, results: list[tuple[int, float]], lock: threading.Lock) -> None:
    started = time.monotonic()
    status = 0
    try:
        with socket.create_connection((PROXY_HOST, stack.proxy_port), timeout=120) as sock:
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {PROXY_HOST}:{stack.proxy_port}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                         .encode())
            try:
                sock.sendall(body)
            except OSError:
                pass  # refused before the body was read: the answer is waiting
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
                if len(answer) > 12:
                    break
            status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    except OSError:
        status = -1
    with lock:
        results.append((status, time.monotonic() - started))


def burst(stack: Stack, body: bytes, connections: int) -> tuple[dict[int, int], int, float]:
    """`connections` senders at once: (statuses, peak RSS, seconds)."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=send, args=(stack, body, results, lock)) for _ in range(connections)]
    peak = haproxy_rss(stack)
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, haproxy_rss(stack))
        time.sleep(0.02)  # sampling, not synchronisation
    counts: dict[int, int] = {}
    for status, _ in results:
        counts[status] = counts.get(status, 0) + 1
    return counts, peak, time.monotonic() - started


def tally(counts: dict[int, int]) -> str:
    """Statuses and how often, as the tables print them: "4× 413, 16× 503"."""
    return ", ".join(f"{n}× {status}" for status, n in sorted(counts.items()))


def stack_with(max_body_mb: int, unknown: str, connections: int) -> Stack:
    stack = new_stack(engine_env={"FAKE_OLLAMA_TOKENS": "1", "FAKE_OLLAMA_SLOTS": str(connections)})
    stack.write_config(stack.default_config().replace(
        "[proxy]\n", f"[proxy]\nmax_body_mb = {max_body_mb}\nrequest_timeout = 60\nqueue_max = {connections * 2}\n")
        .replace("[engine]\n", f"[engine]\nparallel = {connections}\n"))
    (stack.config_dir / "clients.toml").write_text(f'[unknown]\npolicy = "{unknown}"\n')
    return stack


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--max-body-mb", type=int, default=64)
    parser.add_argument("--escaped", type=int, default=12, help="escaped-key bodies at once")
    parser.add_argument("--rounds", type=int, default=0, help="then this many bursts of slow bodies on one stack")
    args = parser.parse_args()
    size = args.max_body_mb * 1024 * 1024
    big = body_of(size)
    mib = 1024 * 1024
    print(f"{args.connections} connections at once, each a {args.max_body_mb} MiB body "
          f"(proxy.max_body_mb = {args.max_body_mb}); HAProxy's RSS, every process summed\n")
    print("| caller | answers | RSS before MiB | peak MiB | after MiB | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for unknown in ("deny", "allow"):
        stack = stack_with(args.max_body_mb, unknown, args.connections)
        try:
            stack.start()
            wait_for(lambda stack=stack: haproxy_rss(stack) > 0, 10, what="haproxy running")
            before = haproxy_rss(stack)
            counts, peak, seconds = burst(stack, big, args.connections)
            time.sleep(1.0)  # let the last buffers go back to HAProxy's pools
            after = haproxy_rss(stack)
            answers = tally(counts)
            print(f"| [unknown] {unknown} | {answers} | {before / mib:.0f} | {peak / mib:.0f} | {after / mib:.0f} | "
                  f"{seconds:.1f} |")
        finally:
            dispose(stack)

    print("\nthe worst scan a client can cause: tiny strings filling the largest body, model key last\n")
    print("| body | answer | seconds |")
    print("| --- | --- | --- |")
    stack = stack_with(args.max_body_mb, "allow", 4)
    (stack.config_dir / "clients.toml").write_text('[defaults]\nmodels = ["smollm2:*"]\n')
    try:
        stack.start()
        for what, body in (("tiny strings, allowed model", tiny_strings(size)),
                           ("tiny strings, forbidden model", tiny_strings(size, "qwen:7b")),
                           ("one key of \\u0041 escapes", escaped_key(size)),
                           ("one prompt of escaped quotes", escaped_prompt(size)),
                           ("escaped model pairs", escaped_pairs(size)),
                           ("one long prompt", big)):
            results: list[tuple[int, float]] = []
            send(stack, body, results, threading.Lock())
            print(f"| {what} ({len(body) / mib:.0f} MiB) | {results[0][0]} | {results[0][1]:.2f} |")
        counts, peak, seconds = burst(stack, escaped_key(size), args.escaped)
        answers = tally(counts)
        print(f"\n{args.escaped} escaped-key bodies at once: {answers} in {seconds:.1f} s, HAProxy peak {peak / mib:.0f} MiB")
        counts, peak, seconds = burst(stack, escaped_pairs(size), args.escaped)
        answers = tally(counts)
        print(f"{args.escaped} escaped-pair bodies at once: {answers} in {seconds:.1f} s, HAProxy peak {peak / mib:.0f} MiB")
        reached = [r["body_len"] for r in stack.engine_requests() if r["target"] == "/v1/chat/completions"]
        print(f"\nbodies that reached the engine: {len(reached)} ({', '.join(f'{n / mib:.0f} MiB' for n in reached)})")
    finally:
        dispose(stack)
    if args.rounds:
        rounds(args.rounds, args.connections, args.max_body_mb)
    return 0


def rounds(count: int, connections: int, max_body_mb: int) -> None:
    """`count` bursts of `connections` senders, each burst one of the slow bodies in turn, on
    one stack: what HAProxy's memory comes to when it is kept at it (what it keeps between
    bursts adds up)."""
    size, mib = max_body_mb * 1024 * 1024, 1024 * 1024
    shapes = (escaped_pairs, tiny_strings, escaped_key, escaped_prompt)
    bodies = [shape(size) for shape in shapes]
    stack = stack_with(max_body_mb, "allow", connections)
    try:
        stack.start()
        peak, counts = 0, Counter[int]()
        for turn in range(count):
            found, top, _ = burst(stack, bodies[turn % len(bodies)], connections)
            peak = max(peak, top)
            counts.update(found)
        answers = tally(counts)
        print(f"\n{count} rounds of {connections} slow {max_body_mb} MiB bodies (four shapes in turn): {answers}; "
              f"HAProxy peak {peak / mib:.0f} MiB, {haproxy_rss(stack) / mib:.0f} MiB after")
    finally:
        dispose(stack)


if __name__ == "__main__":
    sys.exit(main())
