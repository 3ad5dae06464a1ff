"""performance: the proxy adds under a millisecond (the seed's promise) and never bunches a stream."""

from __future__ import annotations

import statistics
import time

import httpx

from ai_server.check.apis import DETERMINISTIC, PROMPT
from ai_server.check.registry import Context, check, expect, needs_model, needs_proxy


def _median_ms(url: str, count: int) -> float:
    samples = []
    with httpx.Client(timeout=10) as client:
        client.get(url)
        for _ in range(count):
            started = time.perf_counter()
            client.get(url)
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


@check("performance", "proxy adds under 1 ms", needs_proxy)
def latency(ctx: Context) -> str:
    path = "/v1/models"
    added = statistics.median(_median_ms(ctx.proxy_url + path, 20) - _median_ms(ctx.engine_url + path, 20)
                              for _ in range(3))
    expect(added < 1.0, f"the proxy adds {added:.2f} ms (seed: < 1 ms)")
    return f"adds {added:.3f} ms at p50"


def _first_token_ms(ctx: Context, url: str) -> float:
    # Read to the end: a stream dropped after its first chunk leaves the engine generating,
    # and the next request would queue behind it.
    started = time.perf_counter()
    first = None
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=120, json={
            "model": ctx.model, "max_tokens": 2, "stream": True,
            "messages": [{"role": "user", "content": PROMPT}], **DETERMINISTIC}) as response:
        for line in response.iter_lines():
            if first is None and line.startswith("data: {"):
                first = (time.perf_counter() - started) * 1000
    expect(first is not None, "no chunk")
    return first or 0.0


@check("performance", "streaming is not buffered", needs_proxy, needs_model)
def streaming(ctx: Context) -> str:
    _first_token_ms(ctx, ctx.engine_url)
    direct, proxied = [], []
    for _ in range(5):  # alternately, so both see the same conditions
        direct.append(_first_token_ms(ctx, ctx.engine_url))
        proxied.append(_first_token_ms(ctx, ctx.proxy_url))
    d, p = statistics.median(direct), statistics.median(proxied)
    # HAProxy holding chunks back (MSG_MORE) would show as ~200 ms here.
    expect(p - d < 100, f"first token {p:.0f} ms through the proxy, {d:.0f} ms direct")
    return f"first token {p:.0f} ms through the proxy, {d:.0f} ms direct"
