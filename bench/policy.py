#!/usr/bin/env python3
"""What per-client policy costs: the same request through two ai-servers side by side, one
without clients.toml and one with a policy in force for the caller (models restricted by glob,
an rpm and a concurrency limit, so every rule runs: identity, paths, the Lua model read, the
stick-table counters). Then the model check on a 2 MiB body whose model key comes last.

    .venv/bin/python bench/policy.py [--requests 3000] [--big 60]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from stats import percentile  # noqa: E402

from harness import PROXY_HOST, dispose, new_stack, wait_for  # noqa: E402

POLICY = '[defaults]\nmodels = ["smollm2:*"]\nrpm = 1000000\nconcurrency = 1000\npriority = "interactive"\n'
SMALL = json.dumps({"model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000, help="small requests per target")
    parser.add_argument("--big", type=int, default=60, help="2 MiB requests per target")
    args = parser.parse_args()
    plain, policed = new_stack(), new_stack()
    (policed.config_dir / "clients.toml").write_text(POLICY)
    try:
        plain.start()
        policed.start()
        conns = {name: http.client.HTTPConnection(PROXY_HOST, s.proxy_port, timeout=30)
                 for name, s in (("no clients.toml", plain), ("policy in force", policed))}

        def once(name: str, body: str) -> float:
            conn = conns[name]
            started = time.perf_counter_ns()
            conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            elapsed = (time.perf_counter_ns() - started) / 1e6
            if response.status != 200:
                raise SystemExit(f"{name}: answered {response.status}")
            return elapsed

        for name in conns:
            wait_for(lambda name=name: once(name, SMALL) > 0, what=name)
            for _ in range(200):
                once(name, SMALL)
        small: dict[str, list[float]] = {name: [] for name in conns}
        for _ in range(args.requests):
            for name in conns:
                small[name].append(once(name, SMALL))
        big_body = '{"messages":[{"role":"user","content":"' + "word " * (2 * 1024 * 1024 // 5) + '"}],"model":"smollm2:135m"}'
        big: dict[str, list[float]] = {name: [] for name in conns}
        for _ in range(args.big):
            for name in conns:
                big[name].append(once(name, big_body))
        print(f"{args.requests} small chat requests and {args.big} of {len(big_body) / 2**20:.1f} MiB (model key last) "
              "per target, interleaved, keep-alive, against the Ollama stand-in\n")
        print("| target | small p50 ms | small p99 ms | 2 MiB p50 ms | 2 MiB p99 ms |")
        print("| --- | --- | --- | --- | --- |")
        for name in conns:
            print(f"| {name} | {percentile(small[name], 50):.3f} | {percentile(small[name], 99):.3f} | "
                  f"{percentile(big[name], 50):.2f} | {percentile(big[name], 99):.2f} |")
        added_small = (percentile(small["policy in force"], 50) - percentile(small["no clients.toml"], 50)) * 1000
        added_big = percentile(big["policy in force"], 50) - percentile(big["no clients.toml"], 50)
        print(f"\nadded by the policy: {added_small:+.0f} µs p50 on a small request (target: at most 50 µs); "
              f"{added_big:+.2f} ms p50 on a 2 MiB body")
        print("\nthe model check itself (ai_server.lua reading the body), p50 over "
              f"{args.big} requests each (target: at most 5 ms on a 2 MiB prompt):\n")
        print("| body | size | added p50 ms |")
        print("| --- | --- | --- |")
        for what, body in bodies(big_body):
            print(f"| {what} | {len(body) / 2**20:.1f} MiB | {model_check_cost(plain.root, body, args.big):+.2f} |")
        return 0
    finally:
        dispose(plain)
        dispose(policed)


def bodies(prompt: str) -> list[tuple[str, str]]:
    """A long prompt; a coding prompt (source code: newlines and quotes escaped); a Claude
    Code-like request of 700 tool results; and the worst a client could send: 240,000 tiny
    strings, each one a turn of the Lua loop."""
    source = (ROOT / "daemon" / "ai_server" / "daemon" / "supervisor.py").read_text()
    code = json.dumps({"messages": [{"role": "user", "content": (source * 200)[:2 << 20]}], "model": "qwen2.5-coder:32b"})
    tools = json.dumps({"model": "qwen2.5-coder:32b", "max_tokens": 1000, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": f"t{i}", "content": source[:3000]} for i in range(700)]}]})
    tiny = json.dumps({"messages": [{"role": "user", "content": "ab"}] * 60000, "model": "smollm2:135m"})
    return [("one 2 MiB prompt, model last", prompt), ("coding prompt", code), ("700 tool results", tools),
            ("240,000 tiny strings (worst case)", tiny)]


def model_check_cost(root: Path, body: str, count: int) -> float:
    """Two HAProxy frontends, the same but for the model action, answering 200 themselves:
    the difference is the Lua reading the body (the check runs for every client, to log and
    route by model, so the stacks above both pay it)."""
    import shutil
    import subprocess

    from ai_server.haproxy import lua, maps
    from ai_server.haproxy.lua import LUA, OLLAMA, SCAN_MS
    from harness import free_port

    folder = root / f"lua-bench-{time.monotonic_ns()}"
    folder.mkdir()
    (folder / LUA).write_text(lua.source())
    for name in (maps.HOLD, maps.MODEL_PATHS):
        (folder / name).write_text("")
    with_port, without_port = free_port(), free_port()
    frontends = ""
    for port, action in ((with_port, "    http-request lua.ai_server_model\n"), (without_port, "")):
        frontends += (f"frontend f{port}\n    bind 127.0.0.1:{port}\n    http-request wait-for-body time 10s at-least 3000000\n"
                      f"{action}    http-request return status 200 content-type text/plain string ok\n")
    (folder / "bench.cfg").write_text(f"global\n    default-path config\n    tune.bufsize 4194304\n"
                                      f"    set-var {SCAN_MS} int({lua.SCAN_BUDGET_MS})\n    set-var {OLLAMA} int(1)\n"
                                      f"    lua-load-per-thread {LUA}\n"
                                      "defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n"
                                      f"    timeout server 30s\n{frontends}")
    proc = subprocess.Popen([shutil.which("haproxy") or "/usr/sbin/haproxy", "-dMglobal", "-db", "-f",
                             str(folder / "bench.cfg")], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conns = {port: http.client.HTTPConnection("127.0.0.1", port, timeout=30) for port in (with_port, without_port)}

        def once(port: int) -> float:
            started = time.perf_counter_ns()
            conns[port].request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            conns[port].getresponse().read()
            return (time.perf_counter_ns() - started) / 1e6

        wait_for(lambda: all(_answers(p) for p in conns), what="bench frontends")
        samples: dict[int, list[float]] = {with_port: [], without_port: []}
        for _ in range(count):
            for port in conns:
                samples[port].append(once(port))
        return percentile(samples[with_port], 50) - percentile(samples[without_port], 50)
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/")
        return conn.getresponse().status == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
