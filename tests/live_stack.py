#!/usr/bin/env python3
"""A live stack to attack the proxy's policy by hand: a front and a node on a 100.x LAN of
network namespaces, a stand-in tailscale CLI reporting a peer map, and clients.toml with a
restricted client. Prints what runs where and how to call it; Enter (or SIGTERM) tears it down.

    sudo .venv/bin/python tests/live_stack.py

Machines (each a network namespace, `ip netns exec NS ...` runs a command on it):
  front    ai-server with [[node]] node1 and its own engine (the stand-in), clients.toml below
  node1    ai-server whose proxy.fronts is the front, [unknown] deny
  laptop   a peer the tailnet map calls alices-macbook (client "laptop": smollm2 only, 2 paths)
  mallory  a peer whose HostName is "alices-macbook" (a device renaming itself): unknown
The stand-in CLI's state is in STANDIN_STATE: write tailscale.down (its text the error),
tailscale.hang or tailscale.garbage there to make `tailscale status` fail, hang or print junk.
Holds the netns lock while it runs (the namespace tests wait).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ai_server.base import tomlfile  # noqa: E402
from harness import Lan, dispose, lan_stack, netns_lock, set_tailscale, tailscale_cli, wait_for  # noqa: E402

CLIENTS = """[unknown]
policy = "deny"

[[client]]
name = "laptop"
device = "alices-macbook"
paths = ["/v1/chat/completions", "/v1/models"]
models = ["smollm2:*"]
rpm = 30
"""


def peer(address: str, label: str, host: str, user: int, node_id: str) -> dict[str, object]:
    return {"ID": node_id, "PublicKey": f"nodekey:{label}", "HostName": host, "DNSName": f"{label}.tail1234.ts.net.",
            "OS": "linux", "UserID": user, "TailscaleIPs": [address], "Online": True}


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    with netns_lock():
        lan = Lan()
        lan.destroy()
        stacks = []
        try:
            lan.create(["front", "node1", "laptop", "mallory"])
            node = lan_stack(lan, "node1", {"FAKE_OLLAMA_MODELS": "llama3:8b,smollm2:135m"})
            stacks.append(node)
            node.write_config(node.default_config().replace("[proxy]\n", f'[proxy]\nfronts = ["{lan.address("front")}"]\n'))
            # The front reads what a node has loaded from its /api/ps.
            (node.config_dir / "allowlist.toml").write_text(tomlfile.default_text("allowlist.toml")
                                                            + '\n[[allow]]\npath = "/api/ps"\nmethods = ["GET"]\n')
            (node.config_dir / "clients.toml").write_text('[unknown]\npolicy = "deny"\n' + CLIENTS.split("\n", 3)[3])
            node.start()
            front = lan_stack(lan, "front", {"FAKE_OLLAMA_MODELS": "smollm2:135m,qwen2.5-coder:7b"})
            stacks.append(front)
            state = tailscale_cli(front)
            set_tailscale(state, [lan.address("front")], peers=[
                peer(lan.address("laptop"), "alices-macbook", "Alice's MacBook", 2, "nLAPTOPCNTRL"),
                peer(lan.address("mallory"), "mallory-pc", "alices-macbook", 3, "nMALLORYCNTRL")])
            front.write_config(front.default_config().replace('listen = ["127.0.0.2"]', 'listen = ["tailscale"]')
                               + f'[[node]]\nname = "node1"\nurl = "http://{lan.address("node1")}:{node.proxy_port}"\n')
            (front.config_dir / "clients.toml").write_text(CLIENTS)
            front.start()
            wait_for(lambda: front.status()["proxy"]["listen"], 30, what="the front listening on the tailnet")
            url = f"http://{lan.address('front')}:{front.proxy_port}"
            print(f"front   {url}  config {front.config_dir}  state {front.state_dir}")
            print(f"node1   http://{lan.address('node1')}:{node.proxy_port}  config {node.config_dir}")
            print(f"STANDIN_STATE={state}")
            for name in ("laptop", "mallory"):
                print(f"{name:<8}ip netns exec {lan.machines[name][0]} curl -s {url}/v1/models")
            print(f"status  ip netns exec {front.netns} env PATH={front.bin_dir}:/usr/bin:/bin "
                  f"AI_SERVER_STATE_DIR={front.state_dir} {sys.executable} -m ai_server --config-dir {front.config_dir} status")
            print("Enter (or SIGTERM) to stop.", flush=True)
            signal.signal(signal.SIGTERM, _interrupt)
            try:
                sys.stdin.readline()
            except KeyboardInterrupt:
                pass
        finally:
            for stack in stacks:
                dispose(stack)
            lan.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
