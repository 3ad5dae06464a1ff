"""The systemd user unit, rendered (pure)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Mapping, Sequence

UNIT = "ai-server.service"


def _quote(value: str) -> str:
    # systemd's own quoting for ExecStart and Environment: double quotes, backslash escapes.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(program: Sequence[str], environment: Mapping[str, str]) -> str:
    env_lines = "\n".join(f"Environment={_quote(f'{k}={v}')}" for k, v in environment.items())
    return f"""# Written by `ai-server install`. `ai-server uninstall` removes it.
[Unit]
Description=ai-server: HAProxy allowlist in front of a loopback-only LLM engine
Documentation=https://github.com/ (see README.md)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={" ".join(_quote(arg) for arg in program)}
{env_lines}
# The supervisor stops its children itself (HAProxy first, then the engine); SIGTERM goes to it
# alone, and whatever is left after the timeout is killed.
KillMode=mixed
TimeoutStopSec=20
Restart=always
RestartSec=2

[Install]
WantedBy=default.target
"""


def unit_path(home: Path, env: Mapping[str, str]) -> Path:
    base = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    return base / "systemd" / "user" / UNIT


def parse(text: str) -> dict[str, dict[str, list[str]]]:
    """The unit's sections and keys (values kept as written), for tests and checks."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif current is not None and "=" in line:
            key, value = line.split("=", 1)
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exec_argv(value: str) -> list[str]:
    return shlex.split(value)
