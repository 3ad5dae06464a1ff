#!/usr/bin/env python3
"""What metering costs (issue 17's figures), in one run:

1. streams: time to first token p50 and the gap between chunks p99, metering on against off;
2. a 2 MiB answer, not streamed: the time metering adds;
3. `ai-server usage` over a ledger holding a year of 20 clients (about 2 million requests);
4. that ledger's size on disk;
5. how soon after a client crosses its quota the proxy refuses it (the goal: within 1 s).

On against off: ai-server starts as shipped in front of the Ollama stand-in; its haproxy.cfg
(without the access log, which needs the supervisor's descriptor) runs as two more HAProxy
processes, one as generated and one with the metering filter's line deleted (there is no
switch for it: metering is always on). Requests alternate between the two, so drift on the
machine hits both alike.

The stand-in answers in about 1.5 ms, so what the proxy adds shows at its largest. With
`--engine llama` the streams go to llama-server serving SmolLM2 135M (the demo's engine) instead,
as a client sees them; that run measures only the streams.

    .venv/bin/python bench/usage.py [--streams 150] [--big 20] [--requests 2000000] [--engine llama]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from ablate import HOST, cpu_seconds, start_copy  # noqa: E402
from stats import percentile  # noqa: E402

from ai_server.access import clients as clients_mod  # noqa: E402
from ai_server.observe.records import Ended  # noqa: E402
from ai_server.observe.usage.ledger import FILE, Ledger  # noqa: E402
from harness import Stack, dispose, llama_config, llama_model, new_stack, port_open, wait_for  # noqa: E402

MODEL = "smollm2:135m"
TOKENS = 32
TOKEN_DELAY = 0.002
# The stand-in's words average about 4.4 bytes: this many make an answer of 2 MiB and a bit.
BIG_TOKENS = 2 * 1024 * 1024 // 4


def proxies(stack: Stack, procs: list[subprocess.Popen[bytes]]) -> dict[str, tuple[str, int]]:
    cfg = re.sub(r"^    log fd@\S+.*$", "", (stack.state_dir / "haproxy.cfg").read_text(), flags=re.M)
    off = re.sub(r"^    filter lua\.ai_server_meter .*$", "", cfg, flags=re.M)
    assert off != cfg, "no metering filter in haproxy.cfg"
    out = {}
    # "off again" is the same as "off": how far two identical proxies differ is the noise floor.
    for i, (name, text) in enumerate((("on", cfg), ("off", off), ("off again", off))):
        proc, out[name] = start_copy(stack, i, text)
        procs.append(proc)
    return out


def stream(addr: tuple[str, int], model: str = MODEL, least: int = TOKENS // 2) -> tuple[float, list[float]]:
    """One streamed chat: ms to the first content chunk, and the gaps between chunks."""
    conn = http.client.HTTPConnection(*addr, timeout=30)
    body = json.dumps({"model": model, "stream": True, "max_tokens": TOKENS, "temperature": 0,
                       "messages": [{"role": "user", "content": "Count from one to forty in words."}]})
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Host": HOST, "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.status
    times = []
    # Read the raw chunks as they come (the connection stays open after the last one).
    while (line := response.fp.readline()) and not line.startswith(b"data: [DONE]"):
        if line.startswith(b"data: {") and b'"content":"' in line:
            times.append(time.perf_counter())
    conn.close()
    assert len(times) >= least, len(times)
    return (times[0] - start) * 1000, [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]


def big(addr: tuple[str, int]) -> float:
    conn = http.client.HTTPConnection(*addr, timeout=60)
    body = json.dumps({"model": MODEL, "stream": False, "max_tokens": BIG_TOKENS,
                       "messages": [{"role": "user", "content": "a lot"}]})
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Host": HOST, "Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    elapsed = (time.perf_counter() - start) * 1000
    assert response.status == 200 and len(data) >= 2 * 1024 * 1024, (response.status, len(data))
    conn.close()
    return elapsed


def year_ledger(path: Path, requests: int, now: float) -> float:
    """A ledger of `requests` generations over the last 365 days from 20 clients and 3
    models, written with the ledger's own API an hour at a time; seconds it took."""
    tz, rng = ZoneInfo("UTC"), random.Random(7)
    clients, models = [f"client{i:02d}" for i in range(20)], [MODEL, "qwen3:0.6b", "llama3:8b"]
    hours = 365 * 24
    per_hour = requests // hours
    ledger = Ledger(path)
    start = time.perf_counter()
    n = 0
    for h in range(hours):
        at = now - (hours - h) * 3600
        batch = []
        for _ in range(per_hour):
            n += 1
            ended_at = at + rng.random() * 3600
            batch.append(Ended(
                id=f"r{n}", client=rng.choice(clients), address="100.64.0.9", port=40000, method="POST",
                path="/v1/chat/completions", query=None, route="/v1/chat/completions", model=rng.choice(models),
                node=None, priority=None, status=200 if rng.random() > 0.01 else 500, received_at=ended_at - 2,
                ended_at=ended_at, forwarded=True, queued=True, bytes_in=300, bytes_out=2000, termination="----",
                t_request_ms=0, t_queue_ms=0, t_connect_ms=0, t_response_ms=40, t_total_ms=2000,
                input_tokens=rng.randint(10, 2000), output_tokens=rng.randint(1, 500), gpu_s=rng.random() * 4,
                ttft_ms=rng.random() * 300, usage_source="engine", estimated_reason=None))
        ledger.add(batch, tz, "bench", n)
    # As the supervisor does: hourly rows past their 35 days go (the daily and monthly stay).
    ledger.prune(now, 400, tz)
    ledger.close()
    return time.perf_counter() - start


def usage_cli(state_dir: Path, config_dir: Path, *args: str) -> float:
    """ms for `ai-server usage ...` as a user runs it (a new Python process each time)."""
    env = {**os.environ, "AI_SERVER_STATE_DIR": str(state_dir), "TZ": "UTC"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "ai_server", "--config-dir", str(config_dir), "usage", *args],
                            env=env, capture_output=True, text=True, timeout=60)
    elapsed = (time.perf_counter() - start) * 1000
    assert result.returncode == 0 and result.stdout, result.stderr
    return elapsed


def quota_refusals(rounds: int) -> list[float]:
    """For each of `rounds` clients with tokens_per_day = 200: requests back to back until one
    is refused; ms from the end of the request that crossed the quota (the engine's counts
    say which) to the first refusal."""
    tokens = {f"kid{i}": "ais_" + chr(ord("a") + i) * 43 for i in range(rounds)}
    stack = new_stack({"FAKE_OLLAMA_TOKENS": "20"})
    stack.write_config(stack.default_config().replace("[proxy]\n", f'[proxy]\nserver_names = ["{HOST}"]\n'))
    (stack.config_dir / "clients.toml").write_text("".join(
        f'[[client]]\nname = "{name}"\ntoken_sha256 = "{clients_mod.token_hash(t)}"\ntokens_per_day = 200\n'
        for name, t in tokens.items()))
    out = []
    try:
        stack.start()
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "one two three"}]})
        for token in tokens.values():
            conn = http.client.HTTPConnection(stack.host, stack.proxy_port, timeout=30)
            used, crossed = 0, None
            while True:
                conn.request("POST", "/v1/chat/completions", body=body, headers={
                    "Host": HOST, "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
                response = conn.getresponse()
                answer = json.loads(response.read())
                ended = time.perf_counter()
                if response.status == 429:
                    assert crossed is not None, "refused before the quota was crossed"
                    out.append((ended - crossed) * 1000)
                    break
                assert response.status == 200, response.status
                used += answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
                if used >= 200 and crossed is None:
                    crossed = ended
            conn.close()
    finally:
        dispose(stack)
    return out


def report(args: argparse.Namespace) -> None:
    llama = args.engine == "llama"
    stack = new_stack({"FAKE_OLLAMA_TOKENS": str(TOKENS), "FAKE_OLLAMA_TOKEN_DELAY": str(TOKEN_DELAY)})
    config = llama_config(stack) if llama else stack.default_config()
    stack.write_config(config.replace("[proxy]\n", f'[proxy]\nserver_names = ["{HOST}"]\n'))
    model, least = (llama_model(), 1) if llama else (MODEL, TOKENS // 2)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        stack.start()
        if llama:
            stack.wait_warm()
        targets = proxies(stack, procs)
        for addr in targets.values():
            wait_for(lambda addr=addr: port_open(*addr), what="the proxy listening")
            stream(addr, model, least)
        # In a new random order each round, so neither drift nor a fixed order favours one.
        rng = random.Random(11)
        names = list(targets)
        ttft: dict[str, list[float]] = {name: [] for name in names}
        gaps: dict[str, list[float]] = {name: [] for name in names}
        pids = dict(zip(names, (proc.pid for proc in procs), strict=True))
        cpu = {name: cpu_seconds([pids[name]]) for name in names}
        for _ in range(args.streams):
            for name in rng.sample(names, len(names)):
                first, between = stream(targets[name], model, least)
                ttft[name].append(first)
                gaps[name] += between
        cpu = {name: (cpu_seconds([pids[name]]) - cpu[name]) / args.streams * 1e6 for name in names}
        bigs: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(0 if llama else args.big):
            for name in rng.sample(names, len(names)):
                bigs[name].append(big(targets[name]))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        dispose(stack)
    if llama:
        print(f"{args.streams} streams each way from llama-server ({model}, up to {TOKENS} tokens), alternating\n")
    else:
        print(f"{args.streams} streams of {TOKENS} tokens ({TOKEN_DELAY * 1000:g} ms apart) and {args.big} answers of "
              f"2 MiB each way, alternating\n")
    rows = [("stream: time to first token p50 ms", {k: percentile(v, 50) for k, v in ttft.items()}),
            ("stream: chunk gap p99 ms", {k: percentile(v, 99) for k, v in gaps.items()}),
            ("stream: HAProxy CPU per stream µs", cpu)]
    if bigs["on"]:
        rows.append(("2 MiB answer, median ms", {k: statistics.median(v) for k, v in bigs.items()}))
    print("| | metering on | metering off | off again | on − off | (on − off) / off | noise: off again − off |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, v in rows:
        on, off, again = v["on"], v["off"], v["off again"]
        print(f"| {label} | {on:.3f} | {off:.3f} | {again:.3f} | {on - off:+.3f} | {(on - off) / off:+.1%} | "
              f"{again - off:+.3f} |")
    if llama:
        return

    waits = quota_refusals(args.quotas)
    print(f"\nQuota crossed to refused ({args.quotas} clients, tokens_per_day = 200, requests back to back): "
          f"median {statistics.median(waits):.0f} ms, longest {max(waits):.0f} ms")

    with tempfile.TemporaryDirectory(prefix="usage-bench-") as root:
        state_dir, config_dir = Path(root) / "state", Path(root) / "cfg"
        state_dir.mkdir()
        config_dir.mkdir()
        (config_dir / "ai-server.toml").write_text('[usage]\ntimezone = "UTC"\n')
        took = year_ledger(state_dir / FILE, args.requests, time.time())
        size = sum(f.stat().st_size for f in state_dir.iterdir() if f.name.startswith(FILE))
        print(f"\nA ledger of {args.requests:,} requests over 365 days, 20 clients, 3 models: written in {took:.1f} s "
              f"(hour by hour), {size / 1e6:.1f} MB on disk\n")
        print("| `ai-server usage ...` (a new process each time, best of 5) | ms |")
        print("| --- | --- |")
        for query in (("--since", "365d"), ("--since", "365d", "--by", "day"), ("--since", "30d", "--by", "hour"),
                      ("--since", "365d", "--by", "model", "--client", "client07"), ("--since", "365d", "--csv")):
            best = min(usage_cli(state_dir, config_dir, *query) for _ in range(5))
            print(f"| {' '.join(query)} | {best:.0f} |")
        startup = min(_python_startup() for _ in range(5))
        print(f"\n(of which starting Python and importing ai-server's CLI: {startup:.0f} ms)")


def _python_startup() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import ai_server.cli"], check=True)
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=150, help="streams each way")
    parser.add_argument("--big", type=int, default=20, help="2 MiB answers each way")
    parser.add_argument("--quotas", type=int, default=5, help="clients crossing a quota")
    parser.add_argument("--requests", type=int, default=2_000_000, help="requests in the year's ledger")
    parser.add_argument("--engine", choices=("standin", "llama"), default="standin",
                        help="stream from the Ollama stand-in (default) or from llama-server")
    report(parser.parse_args())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
