#!/usr/bin/env python3
"""Where the metering filter's cost goes: the generated haproxy.cfg run as standalone copies,
each with the filter's Lua cut short in one place, streams from the Ollama stand-in sent to
each in a new random order every round. Per variant: time to first token p50/p90, chunk gap
p50/p99 and HAProxy's CPU per stream.

    .venv/bin/python bench/meter_ablate.py [--streams 300] [--variants off,on,noop,nodata,silent] [--big 20]

Variants: off (no filter line), on (as shipped), noop (the filter declared, start_analyze
returns at once), nodata (start lines written, no data filter registered), silent (the data
filter registered, its http_payload returns at once), nostart (as shipped without the start line),
old (the filter's Lua as it was at --old, default 9fc4ec3: with an http_headers callback and the
first chunk read before it goes on).
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import usage  # noqa: E402
from ablate import cpu_seconds  # noqa: E402
from stats import percentile  # noqa: E402

from harness import Stack, dispose, free_port, new_stack, port_open, wait_for  # noqa: E402

START = "function Meter:start_analyze(txn, chn)\n"
PAYLOAD = "function Meter:http_payload(txn, msg)\n"
EDITS: dict[str, list[tuple[str, str]] | str | None] = {
    "off": None,
    "on": [],
    "noop": [(START, START + "  do return end\n")],
    "nodata": [("  filter.register_data_filter(self, chn)\n", "")],
    "silent": [(PAYLOAD, PAYLOAD + "  do return end\n")],
    "old": "old",
    "nostart": [("  spool_line(self.starts,", "  if false then spool_line(self.starts,"),
                ('safe(txn:get_var("txn.path"))))\n', 'safe(txn:get_var("txn.path")))) end\n')],
}


def start(stack: Stack, index: int, variant: str, cfg: str, old: str) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    folder = Path(tempfile.mkdtemp(prefix=f"meter{index}-", dir=stack.root))
    for f in stack.state_dir.iterdir():
        if f.is_file() and f.suffix in (".map", ".lua", ".pem"):
            shutil.copy(f, folder / f.name)
    edits = EDITS[variant]
    if edits is None:
        cfg = re.sub(r"^    filter lua\.ai_server_meter .*$", "", cfg, flags=re.M)
    elif isinstance(edits, str):
        (folder / "ai_server_meter.lua").write_bytes(subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{old}:daemon/ai_server/haproxy/ai_server_meter.lua"],
            check=True, capture_output=True).stdout)
    else:
        lua = (folder / "ai_server_meter.lua").read_text()
        for old, new in edits:
            assert old in lua, f"the meter's Lua has no {old!r} any more"
            lua = lua.replace(old, new)
        (folder / "ai_server_meter.lua").write_text(lua)
    address, port = f"127.0.0.{30 + index}", free_port()
    (folder / "haproxy.cfg").write_text(re.sub(r"bind ipv4@127\.0\.0\.2:\d+", f"bind ipv4@{address}:{port}", cfg))
    proc = subprocess.Popen(["haproxy", "-db", "-dMglobal", "-f", str(folder / "haproxy.cfg")], cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, (address, port)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=300, help="streams per variant")
    parser.add_argument("--variants", default=",".join(EDITS))
    parser.add_argument("--old", default="9fc4ec3", help="the commit the old variant's Lua is from")
    parser.add_argument("--big", type=int, default=0, help="2 MiB non-streamed answers per variant, after the streams")
    args = parser.parse_args()
    variants = args.variants.split(",")
    stack = new_stack({"FAKE_OLLAMA_TOKENS": str(usage.TOKENS), "FAKE_OLLAMA_TOKEN_DELAY": str(usage.TOKEN_DELAY)})
    stack.write_config(stack.default_config().replace("[proxy]\n", f'[proxy]\nserver_names = ["{usage.HOST}"]\n'))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        stack.start()
        cfg = re.sub(r"^    log fd@\S+.*$", "", (stack.state_dir / "haproxy.cfg").read_text(), flags=re.M)
        targets = {}
        for i, variant in enumerate(variants):
            procs[variant], targets[variant] = start(stack, i, variant, cfg, args.old)
        for addr in targets.values():
            wait_for(lambda addr=addr: port_open(*addr), what="the proxy listening")
            usage.stream(addr)
        ttft: dict[str, list[float]] = {v: [] for v in variants}
        gaps: dict[str, list[float]] = {v: [] for v in variants}
        cpu = {v: cpu_seconds([procs[v].pid]) for v in variants}
        rng = random.Random(1)
        for _ in range(args.streams):
            for variant in rng.sample(variants, len(variants)):
                first, between = usage.stream(targets[variant])
                ttft[variant].append(first)
                gaps[variant] += between
        cpu = {v: (cpu_seconds([procs[v].pid]) - cpu[v]) / args.streams * 1e6 for v in variants}
        bigs: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.big):
            for variant in rng.sample(variants, len(variants)):
                bigs[variant].append(usage.big(targets[variant]))
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(10)
        dispose(stack)
    print(f"{args.streams} streams of {usage.TOKENS} tokens per variant\n")
    big_head = " 2 MiB answer median ms |" if args.big else ""
    print(f"| variant | TTFT p50 ms | TTFT p90 ms | gap p50 ms | gap p99 ms | HAProxy CPU per stream µs |{big_head}")
    print("| --- | --- | --- | --- | --- | --- |" + (" --- |" if args.big else ""))
    for v in variants:
        print(f"| {v} | {percentile(ttft[v], 50):.3f} | {percentile(ttft[v], 90):.3f} | {percentile(gaps[v], 50):.3f} | "
              f"{percentile(gaps[v], 99):.3f} | {cpu[v]:.0f} |" + (f" {statistics.median(bigs[v]):.3f} |" if args.big else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
