"""The LaunchAgent: rendered (pure) from the launchd/ template with plistlib."""

from __future__ import annotations

import plistlib
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ai_server.base.errors import InstallError

LABEL = "com.ai-server"
# launchd starts jobs with a minimal PATH; Homebrew's folders must be on it.
PATH = "/opt/homebrew/bin:/opt/homebrew/sbin:/usr/local/bin:/usr/local/sbin:/usr/bin:/bin:/usr/sbin:/sbin"
# The seed's two agents, which would fight ai-server for the ports.
OLD_AGENTS = ("com.ollama", "com.haproxy")


def template() -> dict[str, Any]:
    data = resources.files("ai_server").joinpath("templates", f"{LABEL}.plist").read_bytes()
    plist: dict[str, Any] = plistlib.loads(data)
    return plist


def render(program: Sequence[str], environment: Mapping[str, str], log_dir: Path) -> bytes:
    """plistlib escapes XML's own characters; control bytes have no XML form at all, so a path
    holding one is refused rather than written into a plist launchd would reject."""
    for value in [*program, *environment.keys(), *environment.values(), str(log_dir)]:
        if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", value) or "\r" in value or "\n" in value:
            raise InstallError(f"{value!r} holds a control character; it cannot go into the LaunchAgent")
    plist = template()
    plist["ProgramArguments"] = list(program)
    plist["EnvironmentVariables"] = {"PATH": PATH, **environment}
    plist["StandardOutPath"] = str(log_dir / "launchd.stdout.log")
    plist["StandardErrorPath"] = str(log_dir / "launchd.stderr.log")
    return plistlib.dumps(plist, sort_keys=False)


def plist_path(home: Path, label: str = LABEL) -> Path:
    return home / "Library" / "LaunchAgents" / f"{label}.plist"
