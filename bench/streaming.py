#!/usr/bin/env python3
"""Streaming through the proxy vs direct, on llama-server + SmolLM2 135M, side by side in one
run: time to first token and the gaps between chunks. Then the first request to a cold model
against the first request after ai-server pre-warmed it.

    .venv/bin/python bench/streaming.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from stats import percentile  # noqa: E402

from harness import dispose, llama_config, llama_model, new_stack  # noqa: E402


def stream_once(base: str, model: str, tokens: int) -> tuple[float, list[float], float]:
    """(time to first content chunk, gaps between content chunks, total), in ms."""
    body = {"model": model, "max_tokens": tokens, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Write a story about a cat"}]}
    started = time.perf_counter()
    stamps = []
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    stamps.append(time.perf_counter())
    total = (time.perf_counter() - started) * 1000
    gaps = [(b - a) * 1000 for a, b in zip(stamps, stamps[1:], strict=False)]
    return (stamps[0] - started) * 1000, gaps, total


def run_stack(warm: bool):
    stack = new_stack()
    text = llama_config(stack)
    if not warm:
        text = re.sub(r"(?m)^models = \[.*\]$", "models = []", text)
    stack.write_config(text)
    stack.start()
    return stack


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    model = llama_model()

    # Cold: nothing warmed; the first request pays for loading the model.
    stack = run_stack(warm=False)
    try:
        cold_ttft, _, cold_total = stream_once(stack.url(""), model, args.tokens)
        direct = f"http://127.0.0.1:{stack.engine_port}"
        proxied = stack.url("")
        ttft = {"direct": [], "proxy": []}
        gaps = {"direct": [], "proxy": []}
        for _ in range(args.runs):
            for name, base in (("direct", direct), ("proxy", proxied)):
                first, between, _ = stream_once(base, model, args.tokens)
                ttft[name].append(first)
                gaps[name].extend(between)
    finally:
        dispose(stack)

    # Pre-warmed: ai-server loads the model after the engine starts; then the first request.
    stack = run_stack(warm=True)
    try:
        stack.wait_warm()
        warm_ttft, _, warm_total = stream_once(stack.url(""), model, args.tokens)
    finally:
        dispose(stack)

    print(f"llama-server + {model}, {args.runs} interleaved streams of {args.tokens} tokens per path\n")
    print("| path | TTFT p50 ms | TTFT p99 ms | chunk gap p50 ms | chunk gap p99 ms |")
    print("| --- | --- | --- | --- | --- |")
    for name in ("direct", "proxy"):
        print(f"| {name} | {percentile(ttft[name], 50):.1f} | {percentile(ttft[name], 99):.1f} | "
              f"{percentile(gaps[name], 50):.2f} | {percentile(gaps[name], 99):.2f} |")
    print("\n| first request through the proxy | TTFT ms | total ms |")
    print("| --- | --- | --- |")
    print(f"| cold model (loaded on demand) | {cold_ttft:.0f} | {cold_total:.0f} |")
    print(f"| pre-warmed by ai-server | {warm_ttft:.0f} | {warm_total:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
