"""Fail closed around the proxy: the state dir, planted files, forged records, stalled bodies
and config files that are not files. Each case was a way to stall or steer the supervisor."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import psutil
import pytest

from harness import PROXY_HOST, Stack, one_line_failure, wait_for

# -- the state dir ---------------------------------------------------------------------------------

def test_a_state_dir_others_can_write_is_refused(make_stack) -> None:
    stack = make_stack()
    os.chmod(stack.state_dir, 0o777)
    line = one_line_failure(stack.cli("run", timeout=30))
    assert "can be written by group or others" in line and str(stack.state_dir) in line
    assert not (stack.state_dir / "control.sock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the folder to another user")
def test_a_state_dir_of_another_user_is_refused(make_stack) -> None:
    stack = make_stack()
    os.chown(stack.state_dir, 65534, 65534)  # nobody
    os.chmod(stack.state_dir, 0o700)
    line = one_line_failure(stack.cli("run", timeout=30))
    assert "belongs to uid 65534" in line


def test_a_symlinked_state_dir_is_refused(make_stack) -> None:
    stack = make_stack()
    real = stack.root / "elsewhere"
    real.mkdir(mode=0o700)
    stack.state_dir.rmdir()
    stack.state_dir.symlink_to(real)
    line = one_line_failure(stack.cli("run", timeout=30))
    assert "is a symlink" in line


def test_a_new_state_dir_is_created_private(make_stack) -> None:
    stack = make_stack()
    stack.state_dir.rmdir()
    stack.start()
    assert stat.S_IMODE(os.stat(stack.state_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(stack.state_dir / "logs").st_mode) == 0o700


def test_a_planted_symlink_is_replaced_not_written_through(make_stack) -> None:
    stack = make_stack()
    victim = stack.root / "victim"
    victim.write_text("precious\n")
    for name in ("haproxy.cfg", "children.json", "ai_server.lua", "allow-routes.map"):
        (stack.state_dir / name).symlink_to(victim)
    stack.start()
    assert victim.read_text() == "precious\n"
    for name in ("haproxy.cfg", "children.json", "ai_server.lua", "allow-routes.map"):
        assert not (stack.state_dir / name).is_symlink(), name


def test_a_forged_children_record_never_kills_an_unrelated_process(make_stack) -> None:
    """The record names a pid with the right create time, but another command line."""
    stack = make_stack()
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        proc = psutil.Process(bystander.pid)
        (stack.state_dir / "children.json").write_text(json.dumps({"supervisor": 1, "children": {
            "ollama": {"pid": bystander.pid, "create_time": proc.create_time(), "argv": ["ollama", "serve"]}}}))
        stack.start()
        assert bystander.poll() is None
        assert not stack.events("leftovers_stopped")
    finally:
        bystander.kill()
        bystander.wait()


# -- slow request bodies ---------------------------------------------------------------------------

def test_a_stalled_body_holds_no_restart(make_stack) -> None:
    """One byte of a 100-byte body, then silence, used to hold `restart ollama` for 31-61 s and
    every new request with it. Bodies are received whole before they reach the engine now."""
    stack = make_stack()
    stack.write_config(stack.default_config().replace("drain_timeout = 5", "drain_timeout = 5\nrequest_timeout = 2")
                       .replace("start_timeout = 20", "start_timeout = 20\ndrain_timeout = 60"))
    stack.start()
    stalled = socket.create_connection((PROXY_HOST, stack.proxy_port), timeout=30)
    stalled.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {PROXY_HOST}\r\nContent-Type: application/json\r\n"
                    "Content-Length: 100\r\n\r\n{".encode())
    started = time.monotonic()
    result = stack.cli("restart", "ollama")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    # It used to wait for the stalled body (31-61 s); now only for the engine to come back.
    assert took < 2 + 5, f"restart took {took:.1f}s with a stalled body open"
    assert stalled.recv(100).startswith(b"HTTP/1.1 408")  # the proxy's answer, after request_timeout
    stalled.close()
    assert not [r for r in stack.engine_requests() if r["target"] == "/v1/chat/completions"]
    print(f"\nrestart with a stalled body open: {took:.2f}s")


# -- config files that are not files ---------------------------------------------------------------

def test_a_fifo_as_a_config_file_stalls_nothing(stack: Stack) -> None:
    """The supervisor read config files inside its event loop: a FIFO froze `status` and stopped
    crash restarts."""
    allow = stack.config_dir / "allowlist.toml"
    os.mkfifo(stack.config_dir / ".fifo")
    os.replace(stack.config_dir / ".fifo", allow)
    error = wait_for(lambda: stack.status()["proxy"]["config_error"], what="config error")
    assert "allowlist.toml" in error and "not a regular file" in error
    old = stack.child("ollama")["pid"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: (c := stack.child("ollama"))["state"] == "RUNNING" and c["pid"] != old, what="restarted")
    allow.unlink()
    allow.write_text('[[allow]]\npath = "/api/tags"\nmethods = ["GET"]\n')
    wait_for(lambda: stack.status()["proxy"]["config_error"] is None, what="error cleared")


def test_a_huge_config_file_is_refused_and_the_last_good_one_stays(stack: Stack) -> None:
    stack.write_config(stack.default_config() + "#" * (1 << 20))
    error = wait_for(lambda: stack.status()["proxy"]["config_error"], what="config error")
    assert "a config file may hold at most 1048576" in error
    reload = stack.cli("reload")
    assert reload.returncode == 1 and "last good config stays in force" in reload.stderr


# -- wildcard addresses, on reload too -------------------------------------------------------------

@pytest.mark.parametrize("address", ["::ffff:0.0.0.0", "0.0.0.0", "::", "224.0.0.1", "255.255.255.255"])
def test_a_wildcard_listen_address_is_refused_on_reload(stack: Stack, address: str) -> None:
    stack.write_config(stack.default_config().replace(f'["{PROXY_HOST}"]', f'["{address}"]'))
    error = wait_for(lambda: stack.status()["proxy"]["config_error"], what="config error")
    assert "proxy.listen" in error
    listening = {c.laddr.ip for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == stack.proxy_port}
    assert listening == {PROXY_HOST}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the socket to another user")
def test_control_socket_of_another_user_is_not_trusted(make_stack) -> None:
    """A client never talks to a control socket it does not own."""
    stack = make_stack()
    with socket.socket(socket.AF_UNIX) as server:
        path = stack.state_dir / "control.sock"
        server.bind(str(path))
        server.listen()
        os.chown(path, 65534, 65534)
        result = subprocess.run([sys.executable, "-m", "ai_server", "--config-dir", str(stack.config_dir), "status"],
                                env=stack.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "not owned by you" in result.stderr
