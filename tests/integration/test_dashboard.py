"""The dashboard and /metrics on the [metrics] listener: who may see them (admin clients only
from the tailnet, identified as the proxy identifies them), the Host check, the headers that keep
a browser from running anything but our own script, the event stream, and a flood that must not
fill the log."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from ai_server.access import clients
from harness import HOST_ADDR, Stack, Tailnet, peer, set_tailscale, tailscale_cli, wait_for

ADMIN_DEVICE, PHONE, STRANGER = "100.100.77.2", "100.100.77.3", "100.100.77.4"
ADMIN_TOKEN, PLAIN_TOKEN = "ais_" + "A" * 43, "ais_" + "P" * 43
CLIENTS = f"""
[[client]]
name = "owner-laptop"
device = "alices-macbook"
admin = true

[[client]]
name = "phone"
device = "alices-phone"

[[client]]
name = "ops"
token_sha256 = "{clients.token_hash(ADMIN_TOKEN)}"
admin = true

[[client]]
name = "script"
token_sha256 = "{clients.token_hash(PLAIN_TOKEN)}"
"""
METRICS_PORT = 9464  # "tailscale" in [metrics] listen: the tailnet address on 9464


def local_stack(make_stack: Any) -> tuple[Stack, str]:
    stack = make_stack()
    stack.start()
    return stack, stack.metrics_url


def test_security_headers_and_no_inline_script(make_stack: Any) -> None:
    _, base = local_stack(make_stack)
    page = httpx.get(base + "/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    # Every script is a file of ours; no inline script, handler or style attribute anywhere.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.S)
    assert scripts and all('src="/static/' in attrs and body == "" for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+=|\sstyle=|<style|javascript:", page.text, re.I)
    assert not re.search(r'(src|href)="(https?:)?//', page.text)  # nothing from another host
    assert httpx.get(base + "/static/dashboard.js", timeout=10).headers["content-type"].startswith("text/javascript")
    port = int(base.rsplit(":", 1)[1])
    for target in ("/static/../metrics", "/static/%2e%2e/dashboard.js", "/static//dashboard.js", "/static/"):
        assert raw(("127.0.0.1", port), f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()).startswith(
            b"HTTP/1.1 404 "), target
    assert httpx.post(base + "/", timeout=10).status_code == 405


@pytest.mark.parametrize("host", ["evil.example", "evil.example:9464", "127.0.0.1.nip.io", "127.0.0.1:1", "", "[::1]"])
def test_a_host_that_does_not_name_this_server_gets_421(make_stack: Any, host: str) -> None:
    _, base = local_stack(make_stack)
    port = base.rsplit(":", 1)[1]
    answer = raw(("127.0.0.1", int(port)), f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 421 ")
    assert raw(("127.0.0.1", int(port)), f"GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()).startswith(b"HTTP/1.1 421 ")
    for good in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LOCALHOST"):
        assert raw(("127.0.0.1", int(port)), f"GET / HTTP/1.1\r\nHost: {good}\r\n\r\n".encode()).startswith(b"HTTP/1.1 200 ")
    # Two Host headers: ambiguous, refused.
    assert raw(("127.0.0.1", int(port)), f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: {host or 'x'}\r\n\r\n".encode()
               ).startswith(b"HTTP/1.1 421 ")


def raw(address: tuple[str, int], data: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_event_stream_pushes_sections_and_rows(make_stack: Any) -> None:
    stack, base = local_stack(make_stack)
    with httpx.stream("GET", base + "/events", timeout=10) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.iter_lines()
        seen: list[str] = []
        while not any(line.startswith("event: rows") for line in seen):
            seen.append(next(lines))
        assert "event: section" in seen
        assert httpx.get(stack.url("/api/version"), timeout=10).status_code == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = next(lines)
            if line.startswith("data:") and "/api/version" in line:
                break
        else:
            raise AssertionError("the request never reached the open stream")


def test_a_flood_of_connections_costs_a_line_not_a_line_each(make_stack: Any) -> None:
    stack, base = local_stack(make_stack)
    port = int(base.rsplit(":", 1)[1])
    held = []
    try:
        for _ in range(300):  # idle connections, never sending a request
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        busy = 0
        for sock in held[-50:]:
            sock.settimeout(10)
            busy += sock.recv(64).startswith(b"HTTP/1.1 503")
        assert busy == 50
        for _ in range(200):  # garbage, then gone
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: httpx.get(base + "/metrics", timeout=10).status_code == 200, what="metrics served again")
    lines = [e for e in stack.events() if str(e.get("event", "")).startswith("metrics_") or e.get("logger") == "asyncio"]
    assert [e["event"] for e in lines] == ["metrics_connections_refused"]


# -- from the tailnet ------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")


class Net:
    def __init__(self, stack: Stack, tailnet: Tailnet, state: Path) -> None:
        self.stack, self.tailnet, self.state = stack, tailnet, state

    def get(self, source: str, path: str, *headers: str, host: str | None = None) -> int:
        # An event stream never ends: its status is all that is wanted.
        args = ["--interface", source, "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2" if path == "/events" else "10"]
        for header in headers:
            args += ["-H", header]
        if host is not None:
            args += ["-H", f"Host: {host}"]
        return int(self.tailnet.remote(*args, f"http://{HOST_ADDR}:{METRICS_PORT}{path}").stdout or 0)


@pytest.fixture
def net(tailnet: Tailnet, make_stack: Any) -> Iterator[Net]:
    tailnet.create(remote=(PHONE, STRANGER))
    stack = make_stack()
    state = tailscale_cli(stack)
    set_tailscale(state, [HOST_ADDR], peers=[peer(ADMIN_DEVICE, "alices-macbook", 2), peer(PHONE, "alices-phone", 2),
                                             peer(STRANGER, "bobs-pc", 3)])
    stack.write_config(stack.default_config(metrics='["tailscale"]').replace('listen = ["127.0.0.2"]', 'listen = ["tailscale"]'))
    (stack.config_dir / "clients.toml").write_text(CLIENTS)
    stack.start()
    net = Net(stack, tailnet, state)
    wait_for(lambda: net.get(ADMIN_DEVICE, "/metrics") == 200, what="the metrics listener on the tailnet")
    yield net


@needs_root
@pytest.mark.parametrize("path", ["/", "/metrics", "/events", "/static/dashboard.js"])
def test_from_the_tailnet_only_admin_clients_see_it(net: Net, path: str) -> None:
    assert net.get(ADMIN_DEVICE, path) == 200
    assert net.get(PHONE, path) == 403          # a client, not an admin
    assert net.get(STRANGER, path) == 403       # no client at all
    assert net.get(PHONE, path, f"Authorization: Bearer {ADMIN_TOKEN}") == 200
    assert net.get(STRANGER, path, f"x-api-key: {ADMIN_TOKEN}") == 200
    assert net.get(ADMIN_DEVICE, path, f"Authorization: Bearer {PLAIN_TOKEN}") == 403   # the token decides, as on the proxy
    assert net.get(ADMIN_DEVICE, path, "Authorization: Bearer ais_" + "Z" * 43) == 401  # never the device's identity


@needs_root
def test_spoofed_identity_headers_change_nothing(net: Net) -> None:
    for header in ("X-Forwarded-For: 127.0.0.1", f"X-Forwarded-For: {ADMIN_DEVICE}", "X-Real-IP: 127.0.0.1",
                   "Forwarded: for=127.0.0.1", "X-Ai-Server-Client: owner-laptop", "X-Ai-Server-Client: ops",
                   "Authorization: Bearer x", "Authorization: Basic b3duZXI6eA==", f"Authorization: Bearer {ADMIN_TOKEN[:-1]}"):
        assert net.get(PHONE, "/metrics", header) in (401, 403), header
    assert net.get(PHONE, "/metrics", f"Authorization: Bearer {ADMIN_TOKEN}", f"x-api-key: {PLAIN_TOKEN}") == 401


@needs_root
def test_dns_rebinding_hosts_get_421_from_the_tailnet_too(net: Net) -> None:
    for host in ("evil.example", f"evil.example:{METRICS_PORT}", f"localhost:{METRICS_PORT}", "127.0.0.1",
                 f"{HOST_ADDR}:1", "mymac.tail1234.ts.net.evil.example"):
        assert net.get(ADMIN_DEVICE, "/", host=host) == 421, host
    for host in (f"{HOST_ADDR}:{METRICS_PORT}", HOST_ADDR, f"mymac.tail1234.ts.net:{METRICS_PORT}", "mymac", "MyMac."):
        assert net.get(ADMIN_DEVICE, "/", host=host) == 200, host


@needs_root
def test_admin_follows_clients_toml_live(net: Net) -> None:
    promoted = CLIENTS.replace('device = "alices-phone"', 'device = "alices-phone"\nadmin = true')
    (net.stack.config_dir / "clients.toml").write_text(promoted)
    wait_for(lambda: net.get(PHONE, "/metrics") == 200, what="the phone made an admin")
    (net.stack.config_dir / "clients.toml").write_text(CLIENTS.replace("admin = true", "admin = false"))
    wait_for(lambda: net.get(ADMIN_DEVICE, "/metrics") == 403, what="the laptop no longer an admin")


@needs_root
def test_an_open_page_is_cut_when_its_client_stops_being_an_admin(net: Net) -> None:
    url = f"http://{HOST_ADDR}:{METRICS_PORT}/events"
    stream = subprocess.Popen(["ip", "netns", "exec", net.tailnet.ns, "curl", "-sN", "--interface", ADMIN_DEVICE,
                               "--max-time", "60", "-o", "/dev/null", "-w", "%{http_code}", url],
                              stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(c.raddr and c.raddr.ip == ADMIN_DEVICE and c.laddr.port == METRICS_PORT
                             for c in psutil.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED), 10,
                 what="the page's stream open")
        (net.stack.config_dir / "clients.toml").write_text(CLIENTS.replace("admin = true", "admin = false"))
        out, _ = stream.communicate(timeout=20)   # the stream ends well before curl's own 60 s
        assert out == "200"
        assert net.get(ADMIN_DEVICE, "/events") == 403
    finally:
        stream.kill()


@needs_root
def test_a_device_holding_connections_does_not_crowd_out_the_owner(net: Net) -> None:
    hold = ("import socket, sys, time\n"
            f"held = [socket.create_connection(('{HOST_ADDR}', {METRICS_PORT}), source_address=('{STRANGER}', 0))"
            " for _ in range(70)]\n"
            "print('held', flush=True)\ntime.sleep(30)\n")
    flood = subprocess.Popen(["ip", "netns", "exec", net.tailnet.ns, sys.executable, "-c", hold], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert flood.stdout is not None and flood.stdout.readline().strip() == "held"
        assert net.get(ADMIN_DEVICE, "/") == 200
        assert net.get(ADMIN_DEVICE, "/metrics") == 200
    finally:
        flood.kill()
