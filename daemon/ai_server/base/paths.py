"""Where ai-server keeps its config, state and logs, per platform and environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    state_dir: Path
    log_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "ai-server.toml"

    @property
    def allowlist_file(self) -> Path:
        return self.config_dir / "allowlist.toml"

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "control.sock"

    @property
    def haproxy_cfg(self) -> Path:
        return self.state_dir / "haproxy.cfg"

    @property
    def haproxy_log_socket(self) -> Path:
        return self.state_dir / "haproxy-log.sock"

    @property
    def haproxy_stats_socket(self) -> Path:
        return self.state_dir / "haproxy.sock"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "supervisor.lock"

    @property
    def children_file(self) -> Path:
        return self.state_dir / "children.json"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "ai-server.jsonl"


def resolve(
    config_dir: str | None = None,
    env: Mapping[str, str] | None = None,
    platform: str | None = None,
) -> Paths:
    """The three folders, from the command line, then the environment, then the platform."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    home = Path(env.get("HOME") or Path.home())

    if config_dir:
        config = Path(config_dir)
    elif env.get("AI_SERVER_CONFIG_DIR"):
        config = Path(env["AI_SERVER_CONFIG_DIR"])
    else:
        config = Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "ai-server"

    if env.get("AI_SERVER_STATE_DIR"):
        state = Path(env["AI_SERVER_STATE_DIR"])
    elif platform == "darwin":
        state = home / "Library" / "Application Support" / "ai-server"
    else:
        state = Path(env.get("XDG_STATE_HOME") or home / ".local" / "state") / "ai-server"

    if env.get("AI_SERVER_LOG_DIR"):
        logs = Path(env["AI_SERVER_LOG_DIR"])
    elif platform == "darwin":
        logs = home / "Library" / "Logs" / "ai-server"
    else:
        logs = state / "logs"

    return Paths(config.expanduser(), state.expanduser(), logs.expanduser())
