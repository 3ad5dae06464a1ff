"""install / uninstall against stand-ins for launchctl, brew, tailscale, systemctl (and sw_vers,
uname, osascript, pgrep, loginctl) that record their calls and answer like the real ones."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from harness import PROXY_HOST, ROOT, free_port, wait_for

STANDIN = ROOT / "tests" / "fixtures" / "standin.py"
PROGRAMS = ("launchctl", "brew", "tailscale", "systemctl", "sw_vers", "uname", "osascript", "pgrep", "loginctl")


@dataclass
class Machine:
    root: Path
    home: Path
    env: dict[str, str]
    platform: str

    @property
    def state(self) -> Path:
        return self.root / "standin"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ai_server", *args], env=self.env, capture_output=True,
                              text=True, timeout=180, stdin=subprocess.DEVNULL)

    def status(self) -> subprocess.CompletedProcess[str]:
        # This test process is Linux whatever the stand-ins say: point it at the platform's folder.
        return subprocess.run([sys.executable, "-m", "ai_server", "status"], capture_output=True, text=True,
                              env={**self.env, "AI_SERVER_STATE_DIR": str(self.state_dir)}, timeout=60)

    def calls(self) -> list[list[str]]:
        path = self.state / "calls.jsonl"
        return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []

    def changes(self) -> list[list[str]]:
        """The calls that change something (probes left out)."""
        probes = {("launchctl", "print"), ("brew", "services"), ("systemctl", "show-environment"),
                  ("systemctl", "is-active"), ("brew", "--prefix")}
        out = []
        for call in self.calls():
            if call[0] in ("uname", "sw_vers", "pgrep", "loginctl", "tailscale"):
                continue
            if call[0] == "osascript" and "get the name" in call[-1]:
                continue
            head = (call[0], next((a for a in call[1:] if a != "--user"), ""))
            if head in probes and not (call[0] == "brew" and call[1:3] == ["services", "stop"]):
                continue
            out.append(call)
        return out

    @property
    def config_dir(self) -> Path:
        return self.home / ".config" / "ai-server"

    @property
    def state_dir(self) -> Path:
        if self.platform == "darwin":
            return self.home / "Library" / "Application Support" / "ai-server"
        return self.home / ".local" / "state" / "ai-server"

    def supervisor(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if "ai_server" in cmd and "run" in cmd and str(self.config_dir) in cmd:
                found.append(proc)
        return found


def make_machine(platform: str) -> Machine:
    root = Path(tempfile.mkdtemp(prefix="aim-", dir="/tmp"))
    home, bin_dir, brew_bin = root / "home", root / "bin", root / "brew"
    for d in (home, bin_dir, brew_bin):
        d.mkdir()
    for name in PROGRAMS:
        # Homebrew brings Tailscale to a Mac; a Linux user installed it with Tailscale's script.
        if (platform == "darwin" and name == "tailscale") or (
                platform == "linux" and name in ("launchctl", "brew", "sw_vers", "osascript")):
            continue
        (bin_dir / name).symlink_to(STANDIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AI_SERVER_", "XDG_"))}
    env.update({"HOME": str(home), "PATH": f"{bin_dir}:{brew_bin}:/usr/bin:/bin", "STANDIN_STATE": str(root / "standin"),
                "STANDIN_BREW_BIN": str(brew_bin), "STANDIN_UNAME": "Darwin" if platform == "darwin" else "Linux",
                "STANDIN_REAL_HAPROXY": shutil.which("haproxy") or "/usr/sbin/haproxy", "USER": "me"})
    if platform == "linux":
        # What a Linux user has already installed from the distribution, and Ollama's script.
        for name, target in (("haproxy", env["STANDIN_REAL_HAPROXY"]),):
            (bin_dir / name).symlink_to(target)
        ollama = bin_dir / "ollama"
        ollama.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "tests" / "fixtures" / "fake_ollama.py"}" "$@"\n')
        ollama.chmod(0o755)
    return Machine(root, home, env, platform)


def preconfigure(machine: Machine) -> None:
    """A user who already set the proxy's address (here: loopback, not a tailnet)."""
    machine.config_dir.mkdir(parents=True)
    (machine.config_dir / "ai-server.toml").write_text(
        f'[proxy]\nlisten = ["{PROXY_HOST}"]\nport = {free_port()}\n[engine]\nport = {free_port()}\n')


def machine_for(platform: str) -> Iterator[Machine]:
    machine = make_machine(platform)
    yield machine
    machine.cli("uninstall", "--yes")
    for proc in machine.supervisor():
        proc.kill()
    shutil.rmtree(machine.root, ignore_errors=True)


@pytest.fixture
def mac() -> Iterator[Machine]:
    yield from machine_for("darwin")


@pytest.fixture
def linux() -> Iterator[Machine]:
    yield from machine_for("linux")


def seed_competitors(machine: Machine) -> None:
    """What the seed's scripts and Ollama's own installers leave behind on a Mac."""
    agents = machine.home / "Library" / "LaunchAgents"
    agents.mkdir(parents=True)
    (agents / "com.ollama.plist").write_bytes(plistlib.dumps({"Label": "com.ollama", "ProgramArguments": ["ollama"]}))
    machine.state.mkdir(parents=True, exist_ok=True)
    (machine.state / "state.json").write_text(json.dumps({
        "agents": {"com.ollama": {"loaded": True}}, "brew_services": {"ollama": "started", "haproxy": "none"},
        "login_items": ["Ollama", "Dropbox"], "ollama_app_running": True}))


def test_macos_install_then_again_then_uninstall(mac: Machine) -> None:
    preconfigure(mac)
    seed_competitors(mac)
    first = mac.cli("install", "--yes")
    assert first.returncode == 0, first.stderr + first.stdout
    uid = str(os.getuid())
    assert mac.changes() == [
        ["brew", "install", "tailscale"], ["brew", "install", "ollama"], ["brew", "install", "haproxy"],
        ["launchctl", "bootout", f"gui/{uid}/com.ollama"],
        ["brew", "services", "stop", "ollama"],
        ["osascript", "-e", 'tell application "System Events" to delete login item "Ollama"'],
        ["osascript", "-e", 'quit app "Ollama"'],
        ["launchctl", "bootout", f"gui/{uid}/com.ai-server"],
        ["launchctl", "bootstrap", f"gui/{uid}", str(mac.home / "Library/LaunchAgents/com.ai-server.plist")],
    ]
    assert "ai-server is running: " in first.stdout and "grants" in first.stdout  # healthy; ACL steps
    assert (mac.home / "Library/LaunchAgents/com.ollama.plist.disabled-by-ai-server").exists()
    plist = plistlib.loads((mac.home / "Library/LaunchAgents/com.ai-server.plist").read_bytes())
    assert plist["Label"] == "com.ai-server" and plist["RunAtLoad"] is True and plist["KeepAlive"] is True
    assert plist["ProgramArguments"][1:] == ["-m", "ai_server", "--config-dir", str(mac.config_dir), "run"]
    assert plist["EnvironmentVariables"]["PATH"].startswith("/opt/homebrew/bin:")
    assert plist["EnvironmentVariables"]["AI_SERVER_STATE_DIR"] == str(mac.state_dir)
    assert plist["StandardErrorPath"].endswith("Library/Logs/ai-server/launchd.stderr.log")
    assert plist["ExitTimeOut"] == 20
    assert (mac.config_dir / "allowlist.toml").exists()  # written where none was
    status = mac.status()
    assert status.returncode == 0, status.stdout + status.stderr  # the service runs, at the macOS paths

    before = len(mac.calls())
    again = mac.cli("install", "--yes")
    assert again.returncode == 0, again.stderr
    assert [c for c in mac.changes()[9:]] == []  # a second install changes nothing
    assert len(mac.calls()) > before and "is up to date and loaded" in again.stdout

    supervisor = mac.supervisor()
    gone = mac.cli("uninstall", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert mac.changes()[-1] == ["launchctl", "bootout", f"gui/{uid}/com.ai-server"]
    assert not (mac.home / "Library/LaunchAgents/com.ai-server.plist").exists()
    assert not mac.state_dir.exists() and not (mac.home / "Library/Logs/ai-server").exists()
    assert not mac.config_dir.exists()
    assert "kept: Homebrew, Tailscale, the ollama and haproxy programs, and your models" in gone.stdout
    assert (mac.root / "brew" / "ollama").exists()  # the programs stay
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in supervisor),
             what="supervisor stopped")


def test_macos_dry_run_changes_nothing(mac: Machine) -> None:
    result = mac.cli("install", "--dry-run", "--yes")
    assert result.returncode == 0, result.stderr
    assert any(ln.startswith("would run ") and ln.endswith("brew install ollama    # the inference engine")
               for ln in result.stdout.splitlines())
    assert "would write " + str(mac.home / "Library/LaunchAgents/com.ai-server.plist") in result.stdout
    assert "Security Layer: HAProxy Proxy (Highly Recommended)" in result.stdout
    assert mac.changes() == [] and not (mac.home / "Library").exists() and not mac.config_dir.exists()


def test_macos_declining_haproxy_warns_and_never_binds_everywhere(mac: Machine) -> None:
    # No terminal, no --yes: the consent question is answered "yes" by default; a person typing
    # "n" at it gets the proxy-less set-up, which the installer marks in the config.
    from ai_server.base.paths import resolve
    from ai_server.install.installer import Installer
    from ai_server.install.system import System

    system = System(mac.env)
    system.interactive = lambda: True  # type: ignore[method-assign]
    said: list[str] = []
    installer = Installer(system, resolve(None, env=mac.env, platform="darwin"), yes=False, dry_run=True,
                          say=said.append, ask=lambda question: "n")
    actions = installer.install()
    assert any("WARNING: running WITHOUT the HAProxy security layer" in s for s in said)
    assert not any("install haproxy" in a.describe() for a in actions)
    config = next(a for a in actions if a.describe().endswith("ai-server.toml"))
    from ai_server import config as config_mod
    parsed = config_mod.parse_config(config.content.decode())
    assert parsed.proxy.enabled is False and "0.0.0.0" not in parsed.proxy.listen


def test_macos_too_old_or_intel_is_refused(mac: Machine) -> None:
    mac.env["STANDIN_MACOS"] = "13.6"
    result = mac.cli("install", "--yes")
    assert result.returncode == 1 and "macOS 14 or newer is needed; this is 13.6" in result.stderr
    mac.env["STANDIN_MACOS"] = "15.1"
    mac.env["STANDIN_MACHINE"] = "x86_64"
    result = mac.cli("install", "--yes")
    assert result.returncode == 1 and "Apple Silicon" in result.stderr and "Traceback" not in result.stderr


def test_linux_install_then_again_then_uninstall(linux: Machine) -> None:
    preconfigure(linux)
    first = linux.cli("install", "--yes")
    assert first.returncode == 0, first.stderr + first.stdout
    unit_path = linux.home / ".config/systemd/user/ai-server.service"
    assert linux.changes() == [
        ["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "ai-server.service"],
        ["systemctl", "--user", "restart", "ai-server.service"]]
    assert "loginctl enable-linger me" in first.stdout
    from ai_server.install import systemd
    unit = systemd.parse(unit_path.read_text())
    assert unit["Install"]["WantedBy"] == ["default.target"] and unit["Service"]["Restart"] == ["always"]
    argv = systemd.exec_argv(unit["Service"]["ExecStart"][0])
    assert argv[1:] == ["-m", "ai_server", "--config-dir", str(linux.config_dir), "run"]
    assert linux.status().returncode == 0

    again = linux.cli("install", "--yes")
    assert again.returncode == 0 and linux.changes()[3:] == []
    assert "is up to date and active" in again.stdout

    gone = linux.cli("uninstall", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert linux.changes()[3:] == [["systemctl", "--user", "disable", "--now", "ai-server.service"],
                                   ["systemctl", "--user", "daemon-reload"]]
    assert not unit_path.exists() and not linux.state_dir.exists() and not linux.config_dir.exists()
    assert linux.status().returncode == 4


def test_linux_missing_programs_get_apt_hints(linux: Machine) -> None:
    (linux.root / "bin" / "haproxy").unlink()
    result = linux.cli("install", "--yes")
    assert result.returncode == 1 and "install haproxy" in result.stderr and "Traceback" not in result.stderr


def test_dry_run_shows_the_whole_plan_when_prerequisites_are_missing(linux: Machine) -> None:
    """--dry-run used to stop at the first missing piece; now it marks them and goes on."""
    (linux.root / "bin" / "haproxy").unlink()
    (linux.root / "bin" / "systemctl").unlink()  # no systemd user instance answers
    dry = linux.cli("install", "--dry-run", "--yes")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert any(ln.startswith("MISSING: no systemd user instance here") for ln in lines)
    assert any(ln.startswith("MISSING: install these first") and "install haproxy" in ln for ln in lines)
    assert "would write " + str(linux.home / ".config/systemd/user/ai-server.service") in lines
    assert "would run systemctl --user restart ai-server.service" in lines
    assert linux.changes() == [] and not linux.config_dir.exists()
    real = linux.cli("install", "--yes")
    assert real.returncode == 1 and "no systemd user instance here" in real.stderr and "Traceback" not in real.stderr


def test_linux_without_tailscale_is_flagged_like_any_missing_piece(linux: Machine) -> None:
    (linux.root / "bin" / "tailscale").unlink()
    dry = linux.cli("install", "--dry-run", "--yes")
    assert dry.returncode == 0, dry.stderr
    missing = [line for line in dry.stdout.splitlines() if line.startswith("MISSING: install these first")]
    assert len(missing) == 1 and "tailscale.com/install.sh" in missing[0], dry.stdout
    assert "would write " + str(linux.home / ".config/systemd/user/ai-server.service") in dry.stdout
    real = linux.cli("install", "--yes")
    assert real.returncode == 1 and "tailscale.com/install.sh" in real.stderr and "Traceback" not in real.stderr
    assert linux.changes() == []
    # A config that binds explicit addresses, not the tailnet, does not need Tailscale.
    linux.config_dir.mkdir(parents=True)
    (linux.config_dir / "ai-server.toml").write_text(f'[proxy]\nlisten = ["{PROXY_HOST}"]\n')
    explicit = linux.cli("install", "--dry-run", "--yes")
    assert "tailscale.com" not in explicit.stdout, explicit.stdout


def test_macos_dry_run_without_homebrew_shows_the_plan(mac: Machine) -> None:
    mac.env["STANDIN_MACOS"] = "13.6"
    dry = mac.cli("install", "--dry-run", "--yes")
    assert dry.returncode == 0, dry.stderr
    assert "MISSING: macOS 14 or newer is needed; this is 13.6" in dry.stdout
    assert "would write " + str(mac.home / "Library/LaunchAgents/com.ai-server.plist") in dry.stdout
