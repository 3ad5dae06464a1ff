"""The install and uninstall plans for macOS (launchd, Homebrew) and Linux (systemd --user).

A plan is built from what is found, then performed (or printed, with --dry-run). Running it a
second time finds everything in place and changes nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from ai_server import config as config_mod
from ai_server.base import tomlfile
from ai_server.base.errors import AiServerError, InstallError
from ai_server.base.paths import Paths
from ai_server.daemon import control
from ai_server.install import launchd, systemd
from ai_server.install.actions import (
    Action,
    Call,
    MakeDir,
    Move,
    Remove,
    Run,
    WriteFile,
    perform,
)
from ai_server.install.system import System

MIN_MACOS = (14,)

CONSENT = """\
───────────────────────────────────────
Security Layer: HAProxy Proxy (Highly Recommended)
───────────────────────────────────────

This adds a security proxy between clients and Ollama.

Benefits:
  • Only allowlisted endpoints exposed (prevents accidental exposure)
  • Kernel-enforced isolation (Ollama unreachable from network)
  • Future-expandable (auth, rate limits can be added later)

Without proxy:
  • Ollama directly exposed to Tailscale network
  • All Ollama endpoints reachable (including future ones)
  • Higher risk of accidental exposure
"""

NO_PROXY_WARNING = """\
!!! WARNING: running WITHOUT the HAProxy security layer.
!!! Ollama will listen on this machine's tailnet address itself (never 0.0.0.0): every device
!!! your tailnet ACL admits can use EVERY Ollama endpoint, including /api/pull and /api/delete.
!!! To add the proxy later: `brew install haproxy`, set `enabled = true` under [proxy] in
!!! ai-server.toml, and run `ai-server install` again."""

ACL_STEPS = """\
Next, in the Tailscale admin console (Access controls), let only your own devices reach port {port}
on this machine, for example:

    "tagOwners": {{"tag:ai-server": ["autogroup:admin"], "tag:ai-client": ["autogroup:admin"]}},
    "grants":    [{{"src": ["tag:ai-client"], "dst": ["tag:ai-server"], "ip": ["tcp:{port}"]}}]

then `sudo tailscale up --advertise-tags=tag:ai-server` here and tag your laptops tag:ai-client.
Clients use http://<this machine's tailnet name>:{port}/v1 (OpenAI) or http://<name>:{port} (Anthropic).
"""


class Installer:
    def __init__(self, system: System, paths: Paths, *, yes: bool, dry_run: bool,
                 say: Callable[[str], None] = print, ask: Callable[[str], str] = input):
        self.system, self.paths, self.yes, self.dry_run = system, paths, yes, dry_run
        self.say, self._input = say, ask
        self.notes: list[str] = []
        self.missing: list[str] = []

    def prerequisite(self, ok: bool, problem: str) -> None:
        """A real install stops at a missing prerequisite; --dry-run marks it and shows the
        rest of the plan as it would be once it is there."""
        if ok:
            return
        if not self.dry_run:
            raise InstallError(problem)
        self.missing.append(problem)

    # -- shared --------------------------------------------------------------------------------

    def confirm(self, question: str, default: bool) -> bool:
        hint = "[Y/n]" if default else "[y/N]"
        if self.yes or not self.system.interactive():
            self.say(f"{question} {hint} {'yes' if default else 'no'} ({'--yes' if self.yes else 'no terminal'}: the default)")
            return default
        answer = self._input(f"{question} {hint} ").strip().lower()
        return default if not answer else answer.startswith("y")

    def program(self) -> list[str]:
        return [sys.executable, "-m", "ai_server", "--config-dir", str(self.paths.config_dir), "run"]

    def environment(self) -> dict[str, str]:
        # The service and the user's shell must agree on where things are, whatever the
        # service manager's environment says.
        dirs = launchd.PATH.split(":")
        dirs += [d for d in self.system.env.get("PATH", "").split(":") if d and d not in dirs]
        return {"PATH": ":".join(dirs), "AI_SERVER_STATE_DIR": str(self.paths.state_dir),
                "AI_SERVER_LOG_DIR": str(self.paths.log_dir)}

    def _config_files(self, proxy: bool) -> list[Action]:
        actions: list[Action] = []
        for name in ("ai-server.toml", "allowlist.toml", "clients.toml"):
            target = self.paths.config_dir / name
            if target.exists():
                self.notes.append(f"kept your {target}")
                continue
            text = tomlfile.default_text(name)
            if name == "ai-server.toml" and not proxy:
                text = text.replace("[proxy]\n", "[proxy]\n# Declined at install: no HAProxy. See README.\nenabled = false\n", 1)
            actions.append(WriteFile(target, text.encode()))
        return actions

    def _changed(self, path: Path, content: bytes) -> bool:
        try:
            return path.read_bytes() != content
        except FileNotFoundError:
            return True

    def _wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                data = control.request(self.paths.control_socket, "status", timeout=5)
                states = {c["name"]: c["state"] for c in data["children"]}
                last = ", ".join(f"{n} {s}" for n, s in states.items())
                if states and all(s == "RUNNING" for s in states.values()):
                    self.say(f"ai-server is running: {last}")
                    return
                if data["proxy"].get("waiting"):
                    self.say(f"ai-server is running, {data['proxy']['waiting']}")
                    return
            except AiServerError as err:
                last = str(err)
            time.sleep(0.5)
        raise InstallError(f"installed, but ai-server was not healthy within {timeout:g}s ({last}); "
                           "see `ai-server status` and `ai-server tail`")

    # -- install -------------------------------------------------------------------------------

    def install(self) -> list[Action]:
        platform = self.system.platform()
        if platform == "darwin":
            return self._install_macos()
        if platform == "linux":
            return self._install_linux()
        raise InstallError(f"ai-server install supports macOS and Linux, not {platform}")

    def _proxy_wanted(self, have_haproxy: bool) -> bool:
        existing = self.paths.config_file
        if existing.exists():
            try:
                return config_mod.parse_config(existing.read_text(), str(existing)).proxy.enabled
            except AiServerError:
                return True
        if have_haproxy:
            return True
        self.say(CONSENT)
        if self.confirm("Install HAProxy proxy?", default=True):
            return True
        self.say(NO_PROXY_WARNING)
        return False

    def _install_macos(self) -> list[Action]:
        s = self.system
        version = s.macos_version()
        self.prerequisite(not version or version >= MIN_MACOS,
                          f"macOS {'.'.join(map(str, MIN_MACOS))} or newer is needed; this is {'.'.join(map(str, version))}")
        self.prerequisite(s.machine() == "arm64",
                          f"ai-server's installer is for Apple Silicon Macs; this one is {s.machine()}")
        found = s.which("brew")
        self.prerequisite(found is not None,
                          "Homebrew is not installed: see https://brew.sh, then run `ai-server install` again")
        brew = found or "brew"
        actions: list[Action] = []
        tailscale_app = Path("/Applications/Tailscale.app")
        if s.which("tailscale") is None and not tailscale_app.exists():
            actions.append(Run((brew, "install", "tailscale"), why="Tailscale decides who can reach this Mac"))
        if s.which("ollama") is None:
            actions.append(Run((brew, "install", "ollama"), why="the inference engine"))
        proxy = self._proxy_wanted(s.which("haproxy") is not None)
        if proxy and s.which("haproxy") is None:
            actions.append(Run((brew, "install", "haproxy"), why="HAProxy decides what they can use"))
        actions += self._config_files(proxy)
        actions += self._retire_macos(brew)

        plist = launchd.plist_path(s.home)
        content = launchd.render(self.program(), self.environment(), self.paths.log_dir)
        target = f"gui/{s.uid}"
        loaded = s.run("launchctl", "print", f"{target}/{launchd.LABEL}").returncode == 0
        if self._changed(plist, content) or not loaded:
            if not self.paths.log_dir.exists():
                # launchd does not create the folder of StandardErrorPath; output would be lost.
                actions.append(MakeDir(self.paths.log_dir))
            actions.append(WriteFile(plist, content))
            # bootout first: a second install then just works, whatever state the agent is in.
            actions.append(Run(("launchctl", "bootout", f"{target}/{launchd.LABEL}"), may_fail=True,
                               why="unload the previous agent, if any"))
            actions.append(Run(("launchctl", "bootstrap", target, str(plist))))
        else:
            self.notes.append(f"{plist} is up to date and loaded")
        actions.append(Call("wait until `ai-server status` is healthy", self._wait_healthy))
        return actions

    def _retire_macos(self, brew: str) -> list[Action]:
        """What would fight ai-server for the ports: the seed's agents, brew services, the app."""
        s, actions = self.system, list[Action]()
        for label in launchd.OLD_AGENTS:
            old = launchd.plist_path(s.home, label)
            if old.exists():
                actions.append(Run(("launchctl", "bootout", f"gui/{s.uid}/{label}"), may_fail=True,
                                   why=f"retire the old {label} agent"))
                actions.append(Move(old, old.with_name(old.name + ".disabled-by-ai-server")))
        services = s.output(brew, "services", "list")
        for line in services.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 2 and fields[0] in ("ollama", "haproxy") and fields[1] == "started":
                actions.append(Run((brew, "services", "stop", fields[0]),
                                   why=f"ai-server runs {fields[0]} itself"))
        items = s.output("osascript", "-e", 'tell application "System Events" to get the name of every login item')
        if "Ollama" in [i.strip() for i in items.split(",")]:
            actions.append(Run(("osascript", "-e", 'tell application "System Events" to delete login item "Ollama"'),
                               why="the Ollama app would start its own server at login"))
        if s.run("pgrep", "-x", "Ollama").returncode == 0:
            actions.append(Run(("osascript", "-e", 'quit app "Ollama"'), may_fail=True,
                               why="the Ollama menu-bar app holds port 11434"))
        return actions

    def _install_linux(self) -> list[Action]:
        s = self.system
        manager_ok = s.which("systemctl") is not None and s.run("systemctl", "--user", "show-environment").returncode == 0
        self.prerequisite(manager_ok, "no systemd user instance here (`systemctl --user` does not answer); "
                                      "run `ai-server run` under your own service manager instead")
        missing = []
        manager = "apt-get" if s.which("apt-get") else "dnf" if s.which("dnf") else None
        if s.which("ollama") is None:
            missing.append("curl -fsSL https://ollama.com/install.sh | sh   # then: sudo systemctl disable --now ollama")
        if s.which("tailscale") is None and self._listens_on_tailscale():
            missing.append("curl -fsSL https://tailscale.com/install.sh | sh   # then: sudo tailscale up")
        proxy = self._proxy_wanted(s.which("haproxy") is not None)
        if proxy and s.which("haproxy") is None:
            missing.append(f"sudo {manager or 'apt-get'} install haproxy")
        self.prerequisite(not missing, "install these first, then run `ai-server install` again: " + " ; ".join(missing))
        if s.run("systemctl", "is-active", "--quiet", "ollama").returncode == 0:
            self.notes.append("the system-wide ollama.service is running and holds port 11434: "
                              "`sudo systemctl disable --now ollama`")
        actions: list[Action] = self._config_files(proxy)
        unit = systemd.unit_path(s.home, s.env)
        content = systemd.render(self.program(), self.environment()).encode()
        active = manager_ok and s.run("systemctl", "--user", "is-active", "--quiet", systemd.UNIT).returncode == 0
        if self._changed(unit, content) or not active:
            actions.append(WriteFile(unit, content))
            actions.append(Run(("systemctl", "--user", "daemon-reload")))
            actions.append(Run(("systemctl", "--user", "enable", systemd.UNIT)))
            actions.append(Run(("systemctl", "--user", "restart", systemd.UNIT)))
        else:
            self.notes.append(f"{unit} is up to date and active")
        if "Linger=yes" not in s.output("loginctl", "show-user", s.user, "-p", "Linger"):
            self.notes.append(f"to keep it running when you are logged out: `loginctl enable-linger {s.user}`")
        actions.append(Call("wait until `ai-server status` is healthy", self._wait_healthy))
        return actions

    def _listens_on_tailscale(self) -> bool:
        """Whether the config (yours, or the shipped default) binds the tailnet: then Tailscale is
        a prerequisite like the engine. A config that does not parse is reported by `run`."""
        try:
            return "tailscale" in config_mod.read(self.paths.config_dir).proxy.listen
        except AiServerError:
            return True

    # -- uninstall -----------------------------------------------------------------------------

    def uninstall(self) -> list[Action]:
        s, actions = self.system, list[Action]()
        platform = s.platform()
        if platform == "darwin":
            plist = launchd.plist_path(s.home)
            actions.append(Run(("launchctl", "bootout", f"gui/{s.uid}/{launchd.LABEL}"), may_fail=True,
                               why="stop ai-server and its children"))
            if plist.exists():
                actions.append(Remove(plist))
        elif platform == "linux":
            unit = systemd.unit_path(s.home, s.env)
            actions.append(Run(("systemctl", "--user", "disable", "--now", systemd.UNIT), may_fail=True,
                               why="stop ai-server and its children"))
            if unit.exists():
                actions.append(Remove(unit))
                actions.append(Run(("systemctl", "--user", "daemon-reload")))
        else:
            raise InstallError(f"ai-server uninstall supports macOS and Linux, not {platform}")
        for folder in dict.fromkeys((self.paths.log_dir, self.paths.state_dir)):
            if folder.exists():
                actions.append(Remove(folder))
        if self.paths.config_dir.exists():
            if self.confirm(f"Remove your config ({self.paths.config_dir})?", default=True):
                actions.append(Remove(self.paths.config_dir))
            else:
                self.notes.append(f"kept your config in {self.paths.config_dir}")
        self.notes.append("kept: Homebrew, Tailscale, the ollama and haproxy programs, and your models "
                          "(~/.ollama/models)")
        return actions

    def perform(self, actions: list[Action]) -> None:
        for problem in self.missing:
            self.say(f"MISSING: {problem}")
        if not actions:
            self.say("nothing to do")
        perform(actions, self.dry_run, self.say)
        for note in self.notes:
            self.say(note)
