"""The systemd user unit, rendered (pure)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from ai_server.base.errors import InstallError

UNIT = "ai-server.service"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _quoted(value: str, what: str) -> str:
    """One word, as systemd reads it: double quotes with backslash escapes, and `%` doubled (a
    specifier otherwise). A control byte (a newline would start a new directive) is refused."""
    if _CONTROL.search(value):
        raise InstallError(f"{what} holds a control character ({value!r}); rename the folder or variable")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _exec_word(value: str) -> str:
    # In ExecStart, $NAME is replaced by an environment variable too: $$ is a literal $.
    return _quoted(value, "the command line").replace("$", "$$")


def documentation() -> str:
    """The README shipped inside the package, as a file: URL (systemd takes http(s), file,
    info and man URLs only)."""
    readme = Path(str(resources.files("ai_server").joinpath("README.md"))).resolve()
    return readme.as_uri()


def render(program: Sequence[str], environment: Mapping[str, str]) -> str:
    env_lines = "\n".join(f"Environment={_quoted(f'{k}={v}', f'environment variable {k}')}"
                           for k, v in environment.items())
    return f"""# Written by `ai-server install`. `ai-server uninstall` removes it.
[Unit]
Description=ai-server: HAProxy allowlist in front of a loopback-only LLM engine
Documentation={documentation()}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={" ".join(_exec_word(arg) for arg in program)}
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
    """ExecStart's words as systemd passes them to the program."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(value)]


def environment(values: list[str]) -> dict[str, str]:
    """Environment= lines' assignments as systemd sets them."""
    out = {}
    for value in values:
        key, _, rest = shlex.split(value)[0].replace("%%", "%").partition("=")
        out[key] = rest
    return out
