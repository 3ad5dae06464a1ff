"""The supervisor core with real HAProxy and real processes in front of the Ollama stand-in."""

from __future__ import annotations

import json
import os
import signal
import stat
import time

import httpx
import psutil
import pytest

from harness import PROXY_HOST, Stack, one_line_failure, port_open, wait_for


def serving(stack: Stack) -> bool:
    try:
        return httpx.get(stack.url("/api/version"), timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_both_children_start_and_serve_through_the_proxy(stack: Stack) -> None:
    data = stack.status()
    assert data["exit"] == 0
    assert {c["name"]: c["state"] for c in data["children"]} == {"ollama": "RUNNING", "haproxy": "RUNNING"}
    response = httpx.get(stack.url("/api/tags"), timeout=5)
    assert response.status_code == 200
    assert response.json()["models"][0]["name"] == "smollm2:135m"
    # The engine really listens on loopback only, on the port it was told.
    engine = psutil.Process(stack.child("ollama")["pid"])
    listening = {(c.laddr.ip, c.laddr.port) for p in [engine, *engine.children(recursive=True)]
                 for c in p.net_connections() if c.status == psutil.CONN_LISTEN}
    assert listening == {("127.0.0.1", stack.engine_port)}


def test_a_name_of_this_server_reaches_the_engine_any_other_does_not(make_stack) -> None:
    """DNS rebinding: the proxy rewrites Host for the engine, which turns off Ollama's own
    check, so the proxy must make it. A Host naming this server goes through; any other gets
    the proxy's 421 and never reaches the engine."""
    stack = make_stack()
    stack.write_config(stack.default_config().replace("[proxy]\n", '[proxy]\nserver_names = ["mymac.tail1234.ts.net"]\n'))
    stack.start()
    name = "mymac.tail1234.ts.net"
    # Direct to the engine, Ollama's Host check refuses a tailnet name ...
    direct = httpx.get(f"http://127.0.0.1:{stack.engine_port}/api/tags", headers={"Host": name}, timeout=5)
    assert direct.status_code == 403
    # ... so the proxy rewrites it, and the same request through the proxy succeeds.
    # localhost too: the proxy listens on a loopback address here.
    for host in (name, f"{name}:{stack.proxy_port}", f"{name.upper()}.", PROXY_HOST, f"{PROXY_HOST}:{stack.proxy_port}",
                 "localhost", f"localhost:{stack.proxy_port}"):
        assert httpx.get(stack.url("/api/tags"), headers={"Host": host}, timeout=5).status_code == 200, host
    seen = [r for r in stack.engine_requests() if r["target"] == "/api/tags" and r["note"] != "host refused"]
    headers = dict((k.lower(), v) for k, v in seen[-1]["headers"])
    assert headers["host"] == f"127.0.0.1:{stack.engine_port}" and headers["x-forwarded-for"] == "127.0.0.1"
    before = len(stack.engine_requests())
    for host in ("rebind.attacker.example", f"rebind.attacker.example:{stack.proxy_port}", "localhost.evil.example",
                 f"{name}.evil.example", "127.0.0.1", f"{PROXY_HOST}:1", "", "mymac"):
        answer = httpx.get(stack.url("/api/tags"), headers={"Host": host}, timeout=5)
        assert answer.status_code == 421 and answer.json()["status"] == 421, host
    assert [r for r in stack.engine_requests()[before:] if r["target"] != "/"] == []


@pytest.mark.parametrize("name", ["ollama", "haproxy"])
def test_kill_9_of_a_child_comes_back_running_and_serving(stack: Stack, name: str) -> None:
    before = stack.child(name)
    os.kill(before["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: (c := stack.child(name))["state"] == "RUNNING" and c["pid"] != before["pid"], what=f"{name} RUNNING again")
    wait_for(lambda: serving(stack), what="serving again")
    elapsed = time.monotonic() - killed_at
    after = stack.child(name)
    assert after["restarts"] == before["restarts"] + 1
    exited = stack.events("state", process=name, to="EXITED")
    assert exited and "SIGKILL" in exited[-1]["reason"]
    print(f"\n{name}: kill -9 to serving again in {elapsed:.2f}s")


def test_always_crashing_engine_goes_fatal_with_its_reason(make_stack) -> None:
    stack = make_stack(engine_env={"FAKE_OLLAMA_CRASH": "1"})
    stack.start(wait=False)
    wait_for(lambda: stack.proc.poll() is None and stack.log_file.exists()
             and any(e["to"] == "FATAL" for e in stack.events("state", process="ollama")), what="FATAL")
    data = stack.status()
    assert data["exit"] == 3
    engine = next(c for c in data["children"] if c["name"] == "ollama")
    assert engine["state"] == "FATAL"
    assert "gave up after 3 failed starts" in engine["description"]
    assert "FAKE_OLLAMA_CRASH" in engine["description"]  # the child's last words say why
    tries = [e for e in stack.events("state", process="ollama") if e["to"] == "BACKOFF"]
    assert len(tries) == 2  # startretries = 3: two retries, then FATAL
    human = stack.cli("status")
    assert human.returncode == 3 and "FATAL" in human.stdout


def test_fatal_child_starts_again_when_asked(make_stack) -> None:
    stack = make_stack(engine_env={"FAKE_OLLAMA_CRASH": "1"})
    stack.start(wait=False)
    wait_for(lambda: stack.log_file.exists() and stack.events("state", process="ollama", to="FATAL"), what="FATAL")
    result = stack.cli("start", "ollama")
    assert result.returncode == 0
    assert len(stack.events("state", process="ollama", **{"from": "FATAL", "to": "STARTING"})) == 1


def test_sigterm_stops_everything_in_order(stack: Stack) -> None:
    pids = [c["pid"] for c in stack.status()["children"]]
    family = [psutil.Process(p) for p in pids]
    family += [c for p in family for c in p.children(recursive=True)]
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(20) == 0
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not stack.descendants()
    order = [(e["process"], e["to"]) for e in stack.events("state") if e["to"] in ("STOPPING", "STOPPED")]
    assert order == [("haproxy", "STOPPING"), ("haproxy", "STOPPED"), ("ollama", "STOPPING"), ("ollama", "STOPPED")]
    assert not (stack.state_dir / "control.sock").exists()


def test_sigkill_of_supervisor_then_run_again_leaves_no_orphan(stack: Stack) -> None:
    old = {c["name"]: c["pid"] for c in stack.status()["children"]}
    stack.proc.send_signal(signal.SIGKILL)
    stack.proc.wait(10)
    assert all(psutil.pid_exists(p) for p in old.values())  # orphans, for now
    stack.start()
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                             for p in old.values()), what="old children gone")
    new = {c["name"]: c["pid"] for c in stack.status()["children"]}
    assert set(new.values()).isdisjoint(old.values())
    assert serving(stack)
    left = stack.events("leftovers_stopped")
    assert left and sorted(left[-1]["processes"]) == sorted(f"{n} (pid {p})" for n, p in old.items())


def test_second_run_refuses_while_one_is_alive(stack: Stack) -> None:
    result = stack.cli("run", timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("ai-server: ai-server is already running (pid ")
    assert "Traceback" not in result.stderr
    assert stack.status()["exit"] == 0


def test_status_exit_codes(make_stack) -> None:
    stack = make_stack()
    assert stack.cli("status").returncode == 4
    assert "not running" in stack.cli("status").stderr
    stack.start()
    assert stack.cli("status").returncode == 0
    assert stack.cli("stop", "ollama").returncode == 0
    result = stack.cli("status")
    assert result.returncode == 3
    assert "STOPPED" in result.stdout
    assert stack.cli("status", "haproxy").returncode == 0
    unknown = stack.cli("status", "nosuch")
    assert unknown.returncode == 3 and unknown.stdout.strip() == "nosuch: ERROR (no such process)"
    stack.stop()
    assert stack.cli("status").returncode == 4


def test_status_layout_matches_supervisorctl(stack: Stack) -> None:
    lines = stack.cli("status").stdout.splitlines()
    engine = next(ln for ln in lines if ln.startswith("ollama"))
    assert engine[:33] == "ollama".ljust(33)
    assert engine[33:43] == "RUNNING   "
    assert engine[43:].startswith("pid ") and ", uptime 0:00:" in engine
    assert f"proxy: listening on {PROXY_HOST}:{stack.proxy_port}" in lines
    assert f"engine: listening on 127.0.0.1:{stack.engine_port} (loopback only: reached through the proxy)" in lines
    assert any(ln.startswith("allowlist: 8 rules, loaded ") for ln in lines)
    data = json.loads(stack.cli("status", "--json").stdout)
    assert [child["name"] for child in data["children"]] == ["ollama", "haproxy"]
    for child in data["children"]:
        assert {"name", "state", "pid", "uptime_s", "restarts", "description"} <= child.keys()


def test_stop_start_restart_commands(stack: Stack) -> None:
    assert stack.cli("stop", "all").returncode == 0
    assert {c["state"] for c in stack.status()["children"]} == {"STOPPED"}
    assert not serving(stack)
    result = stack.cli("start", "all")
    assert result.returncode == 0, result.stderr
    assert {c["state"] for c in stack.status()["children"]} == {"RUNNING"}
    old = stack.child("ollama")["pid"]
    assert stack.cli("restart", "ollama").returncode == 0
    assert stack.child("ollama")["pid"] != old
    bad = stack.cli("restart", "nginx")
    assert bad.returncode == 1 and "no child named 'nginx'" in bad.stderr


def test_control_socket_is_private(stack: Stack) -> None:
    mode = stat.S_IMODE(os.stat(stack.state_dir / "control.sock").st_mode)
    assert mode == 0o600


def test_logs_state_output_and_request_events(stack: Stack) -> None:
    httpx.get(stack.url("/api/tags?x=1"), timeout=5)
    httpx.post(stack.url("/api/pull"), json={"model": "x"}, timeout=5)
    request = wait_for(lambda: stack.events("request", path="/api/pull"), what="request event")[-1]
    assert request["method"] == "POST" and request["status"] == 403 and request["client"] == "127.0.0.1"
    assert request["forwarded"] is False
    tags = stack.events("request", path="/api/tags")[-1]
    assert tags["status"] == 200 and tags["query"] == "x=1" and tags["forwarded"] is True
    assert tags["t_total_ms"] >= 0 and tags["bytes_out"] > 0
    running = stack.events("state", process="ollama", to="RUNNING")[0]
    assert running["from"] == "STARTING" and running["reason"]
    output = stack.events("output", process="ollama")
    assert any("Listening on 127.0.0.1" in e["line"] for e in output)
    for record in stack.events():
        assert record["timestamp"].endswith("Z") and record["level"] and record["event"]


def test_tail_reads_back_and_filters(stack: Stack) -> None:
    httpx.get(stack.url("/api/version"), timeout=5)
    wait_for(lambda: stack.events("request", path="/api/version"), what="request event")
    result = stack.cli("tail", "-n", "5", "haproxy")
    lines = [json.loads(ln) for ln in result.stdout.splitlines()]
    assert 0 < len(lines) <= 5 and all(ln["process"] == "haproxy" for ln in lines)
    everything = stack.cli("tail", "-n", "1000").stdout.splitlines()
    assert len(everything) > len(lines)


# ---- errors: one line, exit 1, no traceback ---------------------------------------------------

def test_error_haproxy_not_installed(make_stack) -> None:
    stack = make_stack()
    (stack.bin_dir / "haproxy").unlink()
    line = one_line_failure(stack.cli("run", timeout=30))
    assert "HAProxy is not installed" in line and "apt-get install haproxy" in line


def test_error_ollama_not_installed(make_stack) -> None:
    stack = make_stack()
    (stack.bin_dir / "ollama").unlink()
    line = one_line_failure(stack.cli("run", timeout=30))
    assert "ollama is not installed" in line and "brew install ollama" in line


def test_error_engine_port_taken_names_the_holder(make_stack) -> None:
    stack = make_stack()
    holder = subprocess_listener(stack.engine_port)
    try:
        line = one_line_failure(stack.cli("run", timeout=30))
        assert f"port {stack.engine_port} on 127.0.0.1 is already taken by" in line
        assert f"pid {holder.pid}" in line
        assert "engine.port" in line
    finally:
        holder.kill()
        holder.wait()


def test_error_engine_port_held_by_ollama_suggests_the_usual_culprits(make_stack) -> None:
    stack = make_stack()
    env = dict(stack.env, OLLAMA_HOST=f"127.0.0.1:{stack.engine_port}")
    import subprocess
    other = subprocess.Popen([str(stack.bin_dir / "ollama"), "serve"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open("127.0.0.1", stack.engine_port), what="other ollama listening")
        line = one_line_failure(stack.cli("run", timeout=30))
        assert "Ollama menu-bar app" in line and "brew services stop ollama" in line
    finally:
        other.kill()
        other.wait()


def test_error_listen_address_not_on_this_machine(make_stack) -> None:
    stack = make_stack()
    stack.write_config(stack.default_config().replace(f'["{PROXY_HOST}"]', '["192.0.2.10"]'))
    line = one_line_failure(stack.cli("run", timeout=30))
    assert "192.0.2.10 is not an address of this machine" in line


def test_error_invalid_config_names_file_line_and_key(make_stack) -> None:
    stack = make_stack()
    stack.write_config(stack.default_config() + "\n[warm]\nmodles = []\n")
    line = one_line_failure(stack.cli("run", timeout=30))
    lineno = stack.default_config().count("\n") + 3
    assert line == f"ai-server: {stack.config_dir}/ai-server.toml:{lineno}: warm.modles: unknown key"


def test_error_unreadable_config(make_stack) -> None:
    stack = make_stack()
    (stack.config_dir / "allowlist.toml").write_bytes(b"\xff\xfe not utf-8")
    line = one_line_failure(stack.cli("run", timeout=30))
    assert "allowlist.toml" in line and "cannot read" in line


def test_error_invalid_toml_syntax(make_stack) -> None:
    stack = make_stack()
    (stack.config_dir / "allowlist.toml").write_text('[[allow]]\npath = "/v1/models"\nmethods = ["GET"\n')
    line = one_line_failure(stack.cli("run", timeout=30))
    assert "allowlist.toml:3: invalid TOML" in line


# ---- helpers ------------------------------------------------------------------------------------

def subprocess_listener(port: int):
    import subprocess
    import sys
    code = ("import socket,time;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
            f"s.bind(('127.0.0.1',{port}));s.listen();print('ready',flush=True);time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_stalled_log_reader_never_stalls_the_proxy(stack: Stack) -> None:
    """With the supervisor frozen, nobody reads HAProxy's log socket: requests still flow.

    The requests are ones HAProxy answers itself (403), each logged: the engine, which prints a
    line per request to a pipe the frozen supervisor is not reading either, is left out."""
    os.kill(stack.proc.pid, signal.SIGSTOP)
    try:
        with httpx.Client(timeout=5) as client:
            started = time.monotonic()
            answers = [client.get(stack.url("/api/pull")).status_code for _ in range(3000)]
            elapsed = time.monotonic() - started
    finally:
        os.kill(stack.proc.pid, signal.SIGCONT)
    assert answers == [403] * 3000  # far more log lines than the socket buffer holds, none waited for
    print(f"\n3000 requests with the log reader frozen: {elapsed:.2f}s")
    wait_for(lambda: serving(stack) and stack.status()["exit"] == 0, what="supervisor back")


def test_streamed_chunks_are_forwarded_as_produced(make_stack) -> None:
    """The engine sends a token every 50 ms: each must arrive on its own, not bunched up by the
    proxy (HAProxy holds small chunks back for up to 200 ms without option http-no-delay)."""
    stack = make_stack(engine_env={"FAKE_OLLAMA_TOKEN_DELAY": "0.05", "FAKE_OLLAMA_TOKENS": "20"})
    stack.start()
    body = {"model": "smollm2:135m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    stamps = []
    with httpx.stream("POST", stack.url("/v1/chat/completions"), json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                stamps.append(time.monotonic())
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert len(stamps) == 21
    spread = [g for g in gaps if g > 0.025]
    assert len(spread) >= 0.8 * len(gaps), [round(g * 1000) for g in gaps]


def test_log_rotates_by_size_and_tail_reads_across(make_stack) -> None:
    stack = make_stack()
    stack.write_config(stack.default_config() + "\n[log]\nmax_mb = 0.02\nbackups = 3\n")  # ~20 KiB
    stack.start()
    with httpx.Client(timeout=5) as client:
        for _ in range(300):
            client.get(stack.url("/api/version"))
    logs = stack.log_file.parent
    wait_for(lambda: (logs / "ai-server.jsonl.1").exists(), what="a rotated file")
    assert stack.log_file.stat().st_size <= 0.02 * 1024 * 1024 + 4096
    assert not (logs / "ai-server.jsonl.4").exists()  # backups = 3
    in_current = sum(json.loads(ln).get("process") == "haproxy" for ln in stack.log_file.read_text().splitlines())
    lines = stack.cli("tail", "-n", "5000", "haproxy").stdout.splitlines()
    assert len(lines) > in_current  # older lines come from the rotated files
    assert all(json.loads(ln)["process"] == "haproxy" for ln in lines)
    stamps = [json.loads(ln)["timestamp"] for ln in lines]
    assert stamps == sorted(stamps)  # oldest first, across files


def test_fatal_engine_starts_again_when_its_config_changes(make_stack) -> None:
    stack = make_stack()
    broken = stack.default_config().replace("[engine]\n", '[engine]\nenv = { FAKE_OLLAMA_CRASH = "1" }\n')
    stack.write_config(broken)
    stack.start(wait=False)
    wait_for(lambda: stack.log_file.exists() and stack.events("state", process="ollama", to="FATAL"), what="FATAL")
    stack.write_config(stack.default_config())  # the fix
    wait_for(lambda: stack.cli("status").returncode == 0, what="running again")
    assert serving(stack)
