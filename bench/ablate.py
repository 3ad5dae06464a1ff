#!/usr/bin/env python3
"""Where the proxy's added latency goes: copies of the generated haproxy.cfg with the request
rules cut short, run side by side with the engine direct, the real stack and nginx.

ai-server starts as shipped in front of the Ollama stand-in; its haproxy.cfg (without the
access log, which needs the supervisor's descriptor) is copied with the first K rules of the
public frontend kept, for each cut given, and each copy runs as its own HAProxy. Requests are
interleaved round-robin over keep-alive connections, so drift on the machine hits all alike.
Besides the latency, each proxy's CPU time per request (user + system, from /proc) is shown:
on a busy machine it is the steadier figure.

    .venv/bin/python bench/ablate.py [--requests 3000] [--cuts 0,0.25,0.5,0.75]
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from latency import NGINX_HOST, nginx_config  # noqa: E402
from stats import percentile  # noqa: E402

from harness import PROXY_HOST, Stack, dispose, free_port, new_stack, wait_for  # noqa: E402

HOST = "mymac.tail1234.ts.net"


def variants(cfg: str, cuts: list[float]) -> dict[str, str]:
    """name -> haproxy.cfg: the generated one, then one per cut with the first K request rules
    of the public frontend kept (the routing after `set-header Host` always kept). Cutting
    keeps the answer to a request no rule refuses, which is all this sends."""
    base = re.sub(r"^    log fd@\S+.*$", "", cfg, flags=re.M)
    out = {"generated (no log)": base}
    found = re.search(r"^frontend ai_server\n(.*?)\n(?=backend )", base, flags=re.M | re.S)
    assert found, "no public frontend in haproxy.cfg"
    body = [line for line in found.group(1).split("\n") if line.strip() and not line.strip().startswith("#")]
    binds = [line for line in body if line.startswith("    bind ")]
    routing = next(i for i, line in enumerate(body) if line.startswith("    http-request set-header Host"))
    rules = [line for line in body[:routing] if not line.startswith("    bind ")]
    for cut in cuts:
        k = int(len(rules) * cut)
        text = "\n".join(["frontend ai_server", *binds, *rules[:k], *body[routing:]]) + "\n\n"
        out[f"first {k} of {len(rules)} rules"] = base[:found.start()] + text + base[found.end():]
    return out


def start_copy(stack: Stack, index: int, text: str) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    folder = Path(tempfile.mkdtemp(prefix=f"ablate{index}-", dir=stack.root))
    for f in stack.state_dir.iterdir():
        if f.is_file() and f.suffix in (".map", ".lua", ".pem"):
            shutil.copy(f, folder / f.name)
    address, port = f"127.0.0.{10 + index}", free_port()
    (folder / "haproxy.cfg").write_text(re.sub(r"bind ipv4@127\.0\.0\.2:\d+", f"bind ipv4@{address}:{port}", text))
    proc = subprocess.Popen(["haproxy", "-db", "-dMglobal", "-f", str(folder / "haproxy.cfg")], cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, (address, port)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        proc = psutil.Process(pid)
        for p in (proc, *proc.children(recursive=True)):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000, help="per target")
    parser.add_argument("--path", default="/api/version")
    parser.add_argument("--cuts", default="0,0.25,0.5,0.75", help="shares of the request rules to keep")
    args = parser.parse_args()
    cuts = [float(c) for c in args.cuts.split(",")]

    stack = new_stack()
    stack.write_config(stack.default_config().replace("[proxy]\n", f'[proxy]\nserver_names = ["{HOST}"]\n'))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        stack.start()
        targets = {"direct": ("127.0.0.1", stack.engine_port), "ai-server (the stack)": (PROXY_HOST, stack.proxy_port)}
        pids = {"ai-server (the stack)": [p.pid for p in stack.descendants() if p.name() == "haproxy"]}
        for i, (name, text) in enumerate(variants((stack.state_dir / "haproxy.cfg").read_text(), cuts).items()):
            proc, targets[name] = start_copy(stack, i, text)
            procs.append(proc)
            pids[name] = [proc.pid]
        root = Path(tempfile.mkdtemp(prefix="nginx-", dir=stack.root))
        port = free_port()
        (root / "nginx.conf").write_text(nginx_config(root, port, stack.engine_port))
        procs.append(subprocess.Popen(["/usr/sbin/nginx", "-c", str(root / "nginx.conf")], stderr=subprocess.DEVNULL))
        targets["nginx"], pids["nginx"] = (NGINX_HOST, port), [procs[-1].pid]
        conns = {name: http.client.HTTPConnection(*addr, timeout=10) for name, addr in targets.items()}

        def once(name: str) -> float:
            conn = conns[name]
            start = time.perf_counter_ns()
            conn.request("GET", args.path, headers={"Host": HOST if name != "direct" else "127.0.0.1"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"{name}: {args.path} answered {response.status}")
            return (time.perf_counter_ns() - start) / 1e6

        for name in conns:
            wait_for(lambda name=name: once(name) > 0, what=f"{name} answering")
            for _ in range(200):
                once(name)
        before = {name: cpu_seconds(p) for name, p in pids.items()}
        samples: dict[str, list[float]] = {name: [] for name in conns}
        for _ in range(args.requests):
            for name in conns:
                samples[name].append(once(name))
        spent = {name: cpu_seconds(p) - before[name] for name, p in pids.items()}
        direct = percentile(samples["direct"], 50)
        print(f"{args.requests} GET {args.path} per target, interleaved, keep-alive\n")
        print("| target | p50 ms | added p50 ms | proxy CPU µs a request |")
        print("| --- | --- | --- | --- |")
        for name, values in samples.items():
            p50 = percentile(values, 50)
            cpu = f"{1e6 * spent[name] / args.requests:.0f}" if name in spent else "—"
            print(f"| {name} | {p50:.3f} | {p50 - direct:+.3f} | {cpu} |")
        return 0
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        dispose(stack)


if __name__ == "__main__":
    raise SystemExit(main())
