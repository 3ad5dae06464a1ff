"""The tailnet, simulated with a network namespace: a 100.x address on a veth pair.

This machine's side of the pair holds the "tailnet" address; the namespace is a remote device
on the tailnet. `listen = ["tailscale"]` binds it only when Tailscale says it is its own: the
stand-in tailscale CLI (tests/fixtures/standin.py) reports it, or it sits on an interface
named tailscale0. Needs root (CI runs as root).
"""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from harness import (
    HOST_ADDR,
    REMOTE_ADDR,
    Stack,
    Tailnet,
    set_tailscale,
    sh,
    tailscale_cli,
    wait_for,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")

def tailscale_config(stack: Stack) -> str:
    return stack.default_config().replace('listen = ["127.0.0.2"]', 'listen = ["tailscale"]')


def remote_status(net: Tailnet, *args: str) -> str:
    return net.remote("-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", *args).stdout


def test_proxy_reachable_from_the_tailnet_engine_not(make_stack, tailnet: Tailnet) -> None:
    tailnet.create()
    stack = make_stack()
    tailscale_cli(stack)
    stack.write_config(tailscale_config(stack))
    stack.start()
    assert stack.status()["proxy"]["listen"] == [f"{HOST_ADDR}:{stack.proxy_port}"]
    assert remote_status(tailnet, f"http://{HOST_ADDR}:{stack.proxy_port}/api/tags") == "200"
    assert remote_status(tailnet, f"http://{HOST_ADDR}:{stack.proxy_port}/api/pull") == "403"
    # By its MagicDNS name (as Tailscale reports it), too; by somebody else's name, not.
    for name, code in (("mymac.tail1234.ts.net", "200"), ("mymac", "200"), ("rebind.attacker.example", "421")):
        assert remote_status(tailnet, "-H", f"Host: {name}:{stack.proxy_port}",
                             f"http://{HOST_ADDR}:{stack.proxy_port}/api/tags") == code, name
    # The engine is not there, on the tailnet address or any other.
    refused = tailnet.remote("--max-time", "3", f"http://{HOST_ADDR}:{stack.engine_port}/")
    assert refused.returncode == 7  # curl: could not connect
    # And the proxy is only on the tailnet address: not on loopback.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{stack.proxy_port}/api/tags", timeout=2)
    request = wait_for(lambda: stack.events("request", path="/api/tags"), what="request logged")[-1]
    assert request["client"] == REMOTE_ADDR


def test_waits_for_tailscale_then_binds_and_follows(make_stack, tailnet: Tailnet) -> None:
    tailnet.create(with_address=False)
    stack = make_stack()
    state = tailscale_cli(stack, running=False)
    stack.write_config(tailscale_config(stack))
    stack.start(wait=False)
    data = wait_for(lambda: stack.cli("status", "--json").returncode == 3 and stack.status(), what="status")
    assert data["proxy"]["waiting"] == "waiting for a tailnet address: Tailscale is Stopped"
    haproxy = next(c for c in data["children"] if c["name"] == "haproxy")
    assert haproxy["state"] == "STOPPED" and "Tailscale is Stopped" in haproxy["description"]
    assert "proxy: waiting for a tailnet address" in stack.cli("status").stdout
    assert stack.proc.poll() is None  # waiting, not crash-looping

    tailnet.add_address()
    set_tailscale(state, [HOST_ADDR])
    wait_for(lambda: stack.cli("status").returncode == 0, what="bound to the new address")
    assert remote_status(tailnet, f"http://{HOST_ADDR}:{stack.proxy_port}/api/version") == "200"

    set_tailscale(state, None)  # Tailscale stopped: the address may still be on the interface
    wait_for(lambda: stack.status()["proxy"]["waiting"], what="waiting again")
    assert stack.child("haproxy")["state"] == "STOPPED"
    assert remote_status(tailnet, f"http://{HOST_ADDR}:{stack.proxy_port}/api/version") == "000"


def test_a_carrier_address_is_never_taken_for_the_tailnet(make_stack, tailnet: Tailnet) -> None:
    """100.64.0.0/10 is also what phone hotspots and Starlink hand out. With Tailscale down, a
    100.x address on some interface used to be bound as if it were the tailnet's."""
    tailnet.create()  # 100.100.77.1 on an ordinary interface, like a carrier's
    stack = make_stack()
    state = tailscale_cli(stack, running=False)
    (state / "tailscale.down").write_text("failed to connect to local tailscaled; it doesn't appear to be running")
    stack.write_config(tailscale_config(stack))
    stack.start(wait=False)
    data = wait_for(lambda: stack.cli("status", "--json").returncode == 3 and stack.status(), what="status")
    assert data["proxy"]["listen"] == []
    assert "tailscaled" in data["proxy"]["waiting"]
    assert remote_status(tailnet, f"http://{HOST_ADDR}:{stack.proxy_port}/api/version") == "000"


def test_without_the_cli_only_tailscales_own_interface_counts(make_stack, tailnet: Tailnet) -> None:
    tailnet.create()  # 100.100.77.1 on an interface not named tailscale*
    stack = make_stack()
    stack.write_config(tailscale_config(stack))
    stack.start(wait=False)
    data = wait_for(lambda: stack.cli("status", "--json").returncode == 3 and stack.status(), what="status")
    assert data["proxy"]["listen"] == [] and "no tailscale CLI" in data["proxy"]["waiting"]
    stack.stop()
    if any(name.startswith("tailscale") for name in __import__("psutil").net_if_addrs()):
        pytest.skip("this machine runs Tailscale: not touching its interface")
    tailnet.destroy()
    tailnet.create(host_name="tailscale0")
    stack.start()
    assert stack.status()["proxy"]["listen"] == [f"{HOST_ADDR}:{stack.proxy_port}"]
    assert remote_status(tailnet, f"http://{HOST_ADDR}:{stack.proxy_port}/api/version") == "200"


def test_without_the_cli_an_fd7a_address_on_a_lan_interface_is_not_tailscales(make_stack, tailnet: Tailnet) -> None:
    """A router advertisement can put an fd7a:115c:a1e0::/48 address on a LAN interface. Without
    the CLI, any interface holding one counted as Tailscale's, and its 100.x address (a
    carrier's, say) was bound. Only tailscale0 or a utun holding it count now. (Fails on
    today's main: the proxy listens on 100.100.77.1.)"""
    tailnet.create()  # 100.100.77.1 on an ordinary interface
    sh("ip", "addr", "add", "fd7a:115c:a1e0::77/64", "dev", tailnet.host_if, "nodad")
    stack = make_stack()
    stack.write_config(tailscale_config(stack))
    stack.start(wait=False)
    data = wait_for(lambda: stack.cli("status", "--json").returncode == 3 and stack.status(), what="status")
    assert data["proxy"]["listen"] == [] and "no tailscale CLI" in data["proxy"]["waiting"]
    assert remote_status(tailnet, f"http://{HOST_ADDR}:{stack.proxy_port}/api/version") == "000"
