"""The tailnet, simulated with a network namespace: a 100.x address on a veth pair.

This machine's side of the pair holds the "tailnet" address that listen = ["tailscale"] finds;
the namespace is a remote device on the tailnet. Needs root (CI runs as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Iterator

import httpx
import pytest

from harness import Stack, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")

HOST_ADDR, REMOTE_ADDR = "100.100.77.1", "100.100.77.2"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check)


class Tailnet:
    def __init__(self) -> None:
        tag = str(os.getpid() % 100000)
        self.ns, self.host_if, self.remote_if = f"ais{tag}", f"aish{tag}", f"aisr{tag}"

    def create(self, with_address: bool = True) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.remote_if)
        sh("ip", "link", "set", self.remote_if, "netns", self.ns)
        sh("ip", "link", "set", self.host_if, "up")
        sh("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{REMOTE_ADDR}/24", "dev", self.remote_if)
        sh("ip", "netns", "exec", self.ns, "ip", "link", "set", self.remote_if, "up")
        if with_address:
            self.add_address()

    def add_address(self) -> None:
        sh("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", self.host_if)

    def remove_address(self) -> None:
        sh("ip", "addr", "del", f"{HOST_ADDR}/24", "dev", self.host_if)

    def remote(self, *curl_args: str) -> subprocess.CompletedProcess[str]:
        """curl, run on the remote device."""
        return sh("ip", "netns", "exec", self.ns, "curl", "-s", *curl_args, check=False)

    def destroy(self) -> None:
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.ns, check=False)


@pytest.fixture
def tailnet() -> Iterator[Tailnet]:
    net = Tailnet()
    net.destroy()
    yield net
    net.destroy()


def tailscale_config(stack: Stack) -> str:
    return stack.default_config().replace('listen = ["127.0.0.2"]', 'listen = ["tailscale"]')


def remote_status(net: Tailnet, url: str) -> str:
    return net.remote("-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", url).stdout


def test_proxy_reachable_from_the_tailnet_engine_not(make_stack, tailnet: Tailnet) -> None:
    tailnet.create()
    stack = make_stack()
    stack.write_config(tailscale_config(stack))
    stack.start()
    assert stack.status()["proxy"]["listen"] == [f"{HOST_ADDR}:{stack.proxy_port}"]
    assert remote_status(tailnet, f"http://{HOST_ADDR}:{stack.proxy_port}/api/tags") == "200"
    assert remote_status(tailnet, f"http://{HOST_ADDR}:{stack.proxy_port}/api/pull") == "403"
    # The engine is not there, on the tailnet address or any other.
    refused = tailnet.remote("--max-time", "3", f"http://{HOST_ADDR}:{stack.engine_port}/")
    assert refused.returncode == 7  # curl: could not connect
    # And the proxy is only on the tailnet address: not on loopback.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{stack.proxy_port}/api/tags", timeout=2)
    request = wait_for(lambda: stack.events("request", path="/api/tags"), 10, what="request logged")[-1]
    assert request["client"] == REMOTE_ADDR


def test_waits_for_tailscale_then_binds_and_follows(make_stack, tailnet: Tailnet) -> None:
    tailnet.create(with_address=False)
    stack = make_stack()
    stack.write_config(tailscale_config(stack))
    stack.start(wait=False)
    data = wait_for(lambda: stack.cli("status", "--json").returncode == 3 and stack.status(), 20, what="status")
    assert data["proxy"]["waiting"].startswith("waiting for a tailnet address")
    haproxy = next(c for c in data["children"] if c["name"] == "haproxy")
    assert haproxy["state"] == "STOPPED" and "waiting for a tailnet address" in haproxy["description"]
    assert "proxy: waiting for a tailnet address" in stack.cli("status").stdout
    assert stack.proc.poll() is None  # waiting, not crash-looping

    tailnet.add_address()
    wait_for(lambda: stack.cli("status").returncode == 0, 30, what="bound to the new address")
    assert remote_status(tailnet, f"http://{HOST_ADDR}:{stack.proxy_port}/api/version") == "200"

    tailnet.remove_address()
    wait_for(lambda: stack.status()["proxy"]["waiting"], 30, what="waiting again")
    assert stack.child("haproxy")["state"] == "STOPPED"
