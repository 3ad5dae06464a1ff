"""service: the service manager runs ai-server, the supervisor answers, the children run as
they should (as this user, the engine on loopback only, the proxy on the tailnet only)."""

from __future__ import annotations

import os
from collections.abc import Callable

import psutil

from ai_server.base.netaddr import host_port
from ai_server.check.registry import (
    Context,
    Fail,
    Skip,
    check,
    expect,
    needs_proxy,
    needs_status,
)
from ai_server.children import audit
from ai_server.daemon import control
from ai_server.install import launchd, systemd


@check("service", "service manager runs ai-server")
def manager(ctx: Context) -> str:
    s = ctx.system
    if s.platform() == "darwin":
        if not launchd.plist_path(s.home).exists():
            raise Skip("no LaunchAgent installed (running by hand?)")
        expect(s.run("launchctl", "print", f"gui/{s.uid}/{launchd.LABEL}").returncode == 0,
               f"{launchd.LABEL} is not loaded: `ai-server install`")
        return f"gui/{s.uid}/{launchd.LABEL}"
    if not systemd.unit_path(s.home, s.env).exists():
        raise Skip("no systemd user unit installed (running by hand?)")
    expect(s.run("systemctl", "--user", "is-active", "--quiet", systemd.UNIT).returncode == 0,
           f"{systemd.UNIT} is not active: `systemctl --user status {systemd.UNIT}`")
    return systemd.UNIT


@check("service", "supervisor answers")
def supervisor(ctx: Context) -> str:
    ctx.status = control.request(ctx.paths.control_socket, "status", timeout=10)
    return f"pid {ctx.status['supervisor']['pid']}"


def _running(role: str) -> Callable[[Context], str]:
    def test(ctx: Context) -> str:
        child = ctx.child(role)
        expect(child["state"] == "RUNNING", f"{child['name']} is {child['state']}: {child['description']}")
        return str(child["description"])
    return test


check("service", "HAProxy RUNNING", needs_proxy)(_running("haproxy"))
check("service", "engine RUNNING", needs_status)(_running("engine"))


@check("service", "engine runs as this user, not root", needs_status)
def not_root(ctx: Context) -> str:
    pid = ctx.child("engine")["pid"]
    expect(pid, "the engine is not running")
    proc = psutil.Process(pid)
    uid = proc.uids().real
    if uid == 0 and os.getuid() == 0:
        raise Skip("ai-server and this check both run as root here (a container?): nothing to tell apart")
    expect(uid != 0, "the engine runs as root")
    expect(uid == os.getuid(), f"the engine runs as {proc.username()}, not as you")
    return f"runs as {proc.username()}"


@check("service", "engine bound to loopback only", needs_status)
def loopback(ctx: Context) -> str:
    child = ctx.child("engine")
    expect(child["pid"], f"the engine is not running: {child['description']}")
    listeners = audit.snapshot(child["pid"])
    if not ctx.proxied:
        raise Skip("the proxy is disabled: the engine listens on the tailnet address by design")
    found = audit.violations(listeners)
    if found:
        raise Fail("; ".join(found))
    return ", ".join(sorted({host_port(ln.address, ln.port) for ln in listeners})) or "nothing yet"


@check("service", "HAProxy listens on the tailnet address only", needs_proxy)
def proxy_only_there(ctx: Context) -> str:
    child = ctx.child("haproxy")
    expect(child["pid"], "HAProxy is not running")
    wanted = set(ctx.status["proxy"]["listen"])  # type: ignore[index]
    seen = {host_port(ln.address, ln.port) for ln in audit.snapshot(child["pid"])}
    expect(seen, "HAProxy listens nowhere")
    extra = seen - wanted
    if extra:
        raise Fail(f"HAProxy also listens on {', '.join(sorted(extra))}")
    return ", ".join(sorted(seen))


def process_tree(pid: int | None) -> set[int]:
    if not pid:
        return set()
    try:
        root = psutil.Process(pid)
        return {root.pid, *(c.pid for c in root.children(recursive=True))}
    except psutil.Error:
        return set()

