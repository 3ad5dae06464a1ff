#!/usr/bin/env python3
"""What the proxy adds to a request: direct to the engine vs through ai-server's HAProxy vs
through nginx as a plain reverse proxy (the yardstick), side by side in one run.

ai-server runs as shipped (full default allowlist, access logging on) in front of the Ollama
stand-in; nginx proxies to the same engine. Requests are interleaved round-robin over three
keep-alive connections, so drift on the machine hits all three alike.

    .venv/bin/python bench/latency.py [--requests 5000]
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from stats import percentile  # noqa: E402

from harness import PROXY_HOST, dispose, free_port, new_stack, wait_for  # noqa: E402

NGINX_HOST = "127.0.0.3"


def nginx_config(root: Path, port: int, engine_port: int) -> str:
    return f"""daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log {root}/nginx-access.log;
    client_body_temp_path {root};
    proxy_temp_path {root};
    upstream engine {{ server 127.0.0.1:{engine_port}; keepalive 8; }}
    server {{
        listen {NGINX_HOST}:{port};
        location / {{
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:{engine_port};
            proxy_buffering off;
        }}
    }}
}}
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000, help="per target")
    parser.add_argument("--path", default="/api/version")
    args = parser.parse_args()

    stack = new_stack()
    # Clients name the server by its MagicDNS name, which the Host check accepts.
    stack.write_config(stack.default_config().replace("[proxy]\n", '[proxy]\nserver_names = ["mymac.tail1234.ts.net"]\n'))
    nginx = None
    try:
        stack.start()
        targets = {"direct": ("127.0.0.1", stack.engine_port), "ai-server (HAProxy)": (PROXY_HOST, stack.proxy_port)}
        if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
            root = Path(tempfile.mkdtemp(prefix="nginx-", dir=stack.root))
            port = free_port()
            (root / "nginx.conf").write_text(nginx_config(root, port, stack.engine_port))
            nginx = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(root / "nginx.conf")],
                                     stderr=subprocess.DEVNULL)
            targets["nginx (plain proxy)"] = (NGINX_HOST, port)
        conns = {name: http.client.HTTPConnection(*addr, timeout=10) for name, addr in targets.items()}

        def once(name: str) -> float:
            conn = conns[name]
            start = time.perf_counter_ns()
            conn.request("GET", args.path, headers={"Host": "mymac.tail1234.ts.net" if name != "direct" else "127.0.0.1"})
            response = conn.getresponse()
            response.read()
            elapsed = (time.perf_counter_ns() - start) / 1e6
            if response.status != 200:
                raise SystemExit(f"{name}: {args.path} answered {response.status}")
            return elapsed

        for name in conns:  # connect, warm up
            wait_for(lambda name=name: once(name) > 0, what=f"{name} answering")
            for _ in range(200):
                once(name)
        samples: dict[str, list[float]] = {name: [] for name in conns}
        for _ in range(args.requests):
            for name in conns:
                samples[name].append(once(name))

        direct = samples["direct"]
        print(f"{args.requests} GET {args.path} per target, interleaved, keep-alive; "
              f"ai-server with the full default allowlist and access logging on\n")
        print("| target | p50 ms | p99 ms | added p50 ms | added p99 ms |")
        print("| --- | --- | --- | --- | --- |")
        for name, values in samples.items():
            p50, p99 = percentile(values, 50), percentile(values, 99)
            added = "" if name == "direct" else f"{p50 - percentile(direct, 50):+.3f} | {p99 - percentile(direct, 99):+.3f}"
            print(f"| {name} | {p50:.3f} | {p99:.3f} | {added or '— | —'} |")
        logged = len(stack.events("request", path=args.path))
        print(f"\nrequest events logged by ai-server: {logged} (of {args.requests + 200 + 1} sent through it)")
        print(f"mean direct {statistics.mean(direct):.3f} ms")
        return 0
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        dispose(stack)


if __name__ == "__main__":
    sys.exit(main())
