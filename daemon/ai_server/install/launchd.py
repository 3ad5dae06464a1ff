"""The LaunchAgent: rendered (pure) from the launchd/ template with plistlib."""

from __future__ import annotations

import plistlib
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

LABEL = "com.ai-server"
# launchd starts jobs with a minimal PATH; Homebrew's folders must be on it.
PATH = "/opt/homebrew/bin:/opt/homebrew/sbin:/usr/local/bin:/usr/local/sbin:/usr/bin:/bin:/usr/sbin:/sbin"
# The seed's two agents, which would fight ai-server for the ports.
OLD_AGENTS = ("com.ollama", "com.haproxy")


def template() -> dict:
    data = resources.files("ai_server").joinpath("templates", f"{LABEL}.plist").read_bytes()
    return plistlib.loads(data)


def render(program: Sequence[str], environment: Mapping[str, str], log_dir: Path) -> bytes:
    plist = template()
    plist["ProgramArguments"] = list(program)
    plist["EnvironmentVariables"] = {"PATH": PATH, **environment}
    plist["StandardOutPath"] = str(log_dir / "launchd.stdout.log")
    plist["StandardErrorPath"] = str(log_dir / "launchd.stderr.log")
    return plistlib.dumps(plist, sort_keys=False)


def plist_path(home: Path, label: str = LABEL) -> Path:
    return home / "Library" / "LaunchAgents" / f"{label}.plist"
