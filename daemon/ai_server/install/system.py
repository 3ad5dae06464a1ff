"""What the installer asks of the machine, through the same commands a person would use
(uname, sw_vers, brew, launchctl, systemctl): thin, and easy to stand in for in tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ai_server.daemon.preflight import search_path


@dataclass
class System:
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def home(self) -> Path:
        return Path(self.env.get("HOME") or Path.home())

    @property
    def uid(self) -> int:
        return os.getuid()

    @property
    def user(self) -> str:
        return self.env.get("USER") or self.env.get("LOGNAME") or str(self.uid)

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=search_path(self.env))

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a probe; a missing program answers like a failed one (exit 127)."""
        program = self.which(argv[0]) or argv[0]
        try:
            return subprocess.run([program, *argv[1:]], capture_output=True, text=True, timeout=60,
                                  env=dict(self.env))
        except (OSError, subprocess.TimeoutExpired) as err:
            return subprocess.CompletedProcess(list(argv), 127, "", str(err))

    def output(self, *argv: str) -> str:
        result = self.run(*argv)
        return result.stdout.strip() if result.returncode == 0 else ""

    def platform(self) -> str:
        """"darwin" or "linux", from uname -s."""
        return (self.output("uname", "-s") or os.uname().sysname).lower()

    def machine(self) -> str:
        return self.output("uname", "-m") or os.uname().machine

    def macos_version(self) -> tuple[int, ...]:
        text = self.output("sw_vers", "-productVersion")
        try:
            return tuple(int(part) for part in text.split("."))
        except ValueError:
            return ()

    def interactive(self) -> bool:
        return os.isatty(0)
