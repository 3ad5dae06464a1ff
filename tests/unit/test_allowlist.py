"""Compiling and editing the allowlist."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_server import allowlist, config
from ai_server.errors import ConfigError

DEFAULT = config.parse_allowlist(config.default_text("allowlist.toml"))


@pytest.mark.parametrize("name", ["qwen2.5-coder:32b", "llama3", "hf.co/org/repo:Q4_K_M", "deepseek-r1:70b",
                                  "registry.example.com:5000/ns/model:tag", "user/model", "smollm2:135m"])
def test_model_names_match(name: str) -> None:
    assert allowlist.decide(DEFAULT, "GET", f"/v1/models/{name}") == 0


@pytest.mark.parametrize("method, target, expected", [
    ("POST", "/v1/chat/completions", 0),
    ("POST", "/v1/messages?beta=true", 0),
    ("GET", "/v1/chat/completions", 405),
    ("post", "/v1/chat/completions", 405),
    ("POST", "/api/pull", 403),
    ("GET", "/v1/models/../../api/pull", 403),
    ("GET", "/v1/models/%2e%2e/api", 403),
    ("POST", "/v1/%63hat/completions", 403),
    ("POST", "/v1/chat/completions/", 403),
    ("POST", "//v1/chat/completions", 403),
    ("POST", "/v1/chat//completions", 403),
    ("POST", "/V1/chat/completions", 403),
    ("POST", "/v1/chat/completions;x=1", 403),
    ("POST", "/v1\\chat\\completions", 403),
    ("GET", "/v1/models/a/b/c/d/e", 403),
    ("GET", "/v1/models/.hidden", 403),
    ("POST", "http://x/api/pull", 400),
    ("OPTIONS", "*", 400),
])
def test_decide(method: str, target: str, expected: int) -> None:
    assert allowlist.decide(DEFAULT, method, target) == expected


def test_add_and_remove_keep_comments(tmp_path: Path) -> None:
    target = tmp_path / "allowlist.toml"
    target.write_text(config.default_text("allowlist.toml"))
    before = target.read_text()
    assert allowlist.add_rule(target, "/api/ps", ["get"]) == "allowed GET /api/ps"
    after = target.read_text()
    assert after.startswith(before.rstrip("\n"))  # every comment and rule kept, in place
    assert allowlist.add_rule(target, "/api/ps", ["GET", "HEAD"]) == "/api/ps now allows GET, HEAD"
    assert allowlist.add_rule(target, "/api/ps", ["GET"]) == "/api/ps already allows GET, HEAD"
    rules = config.parse_allowlist(target.read_text()).rules
    assert rules[-1].path == "/api/ps" and rules[-1].methods == ("GET", "HEAD")
    assert allowlist.remove_rule(target, "/api/ps") == "removed /api/ps"
    assert config.parse_allowlist(target.read_text()) == config.parse_allowlist(before)
    assert "# Anthropic-compatible API: Claude Code, the Anthropic SDKs." in target.read_text()
    assert "# chat, streaming or not, JSON mode, tool calls" in target.read_text()


def test_add_refuses_bad_input_and_leaves_file_alone(tmp_path: Path) -> None:
    target = tmp_path / "allowlist.toml"
    target.write_text(config.default_text("allowlist.toml"))
    before = target.read_text()
    with pytest.raises(ConfigError, match="not a method"):
        allowlist.add_rule(target, "/api/pull", ["YANK"])
    with pytest.raises(ConfigError, match="must not hold"):
        allowlist.add_rule(target, "/v1/../api/pull", ["POST"])
    with pytest.raises(ConfigError, match="no rule has path"):
        allowlist.remove_rule(target, "/api/pull")
    assert target.read_text() == before


def test_add_to_missing_file_starts_from_the_shipped_default(tmp_path: Path) -> None:
    target = tmp_path / "cfg" / "allowlist.toml"
    allowlist.add_rule(target, "/api/ps", ["GET"])
    assert len(config.parse_allowlist(target.read_text()).rules) == 9


def test_maps_hold_one_entry_per_rule() -> None:
    paths = allowlist.path_map(DEFAULT)
    routes = allowlist.route_map(DEFAULT)
    assert paths[0] == ("^/v1/chat/completions$", "POST")
    assert routes[2][0].startswith("^(GET)@/v1/models/[A-Za-z0-9_]") and routes[2][1] == "1"
    assert all(" " not in key and ";" not in key for key, _ in paths + routes)  # safe on the runtime API
