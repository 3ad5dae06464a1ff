"""Compiling and editing the allowlist."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_server.access import allowlist
from ai_server.base import tomlfile
from ai_server.base.errors import ConfigError

DEFAULT = allowlist.parse(tomlfile.default_text("allowlist.toml"))


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
    target.write_text(tomlfile.default_text("allowlist.toml"))
    before = target.read_text()
    assert allowlist.add_rule(target, "/api/ps", ["get"]) == "allowed GET /api/ps"
    after = target.read_text()
    assert after.startswith(before.rstrip("\n"))  # every comment and rule kept, in place
    assert allowlist.add_rule(target, "/api/ps", ["GET", "HEAD"]) == "/api/ps now allows GET, HEAD"
    assert allowlist.add_rule(target, "/api/ps", ["GET"]) == "/api/ps already allows GET, HEAD"
    rules = allowlist.parse(target.read_text()).rules
    assert rules[-1].path == "/api/ps" and rules[-1].methods == ("GET", "HEAD")
    assert allowlist.remove_rule(target, "/api/ps") == "removed /api/ps"
    assert allowlist.parse(target.read_text()) == allowlist.parse(before)
    assert "# Anthropic-compatible API: Claude Code, the Anthropic SDKs." in target.read_text()
    assert "# chat, streaming or not, JSON mode, tool calls" in target.read_text()


def test_add_refuses_bad_input_and_leaves_file_alone(tmp_path: Path) -> None:
    target = tmp_path / "allowlist.toml"
    target.write_text(tomlfile.default_text("allowlist.toml"))
    before = target.read_text()
    with pytest.raises(ConfigError, match="not a method"):
        allowlist.add_rule(target, "/api/ps", ["YANK"])
    with pytest.raises(ConfigError, match="must not hold"):
        allowlist.add_rule(target, "/v1/../api/pull", ["POST"])
    with pytest.raises(ConfigError, match="no rule has path"):
        allowlist.remove_rule(target, "/api/pull")
    assert target.read_text() == before


def test_add_to_missing_file_starts_from_the_shipped_default(tmp_path: Path) -> None:
    target = tmp_path / "cfg" / "allowlist.toml"
    allowlist.add_rule(target, "/api/ps", ["GET"])
    assert len(allowlist.parse(target.read_text()).rules) == 9


@pytest.mark.parametrize("path", ["/api/tags\n", "/api/tags\r", "/v1/embeddings\n", " /v1/models", "/v1/models\t",
                                  "/v1/mo\x00dels", "/v1/models\u2028"])
def test_whitespace_and_control_characters_are_refused_everywhere(tmp_path: Path, path: str) -> None:
    """A trailing newline used to pass validation ($ matches before it) and leave a map key
    that matched every path and method."""
    text = f'[[allow]]\npath = {tomlfile.toml_string(path)}\nmethods = ["GET"]\n'
    with pytest.raises(ConfigError, match="allow\\[0\\].path: .*whitespace or a control character"):
        allowlist.parse(text)
    target = tmp_path / "allowlist.toml"
    target.write_text(tomlfile.default_text("allowlist.toml"))
    before = target.read_bytes()
    with pytest.raises(ConfigError, match="whitespace or a control character"):
        allowlist.add_rule(target, path, ["GET"])
    assert target.read_bytes() == before


@pytest.mark.parametrize("path, reaches", [("/{model}", "/api/pull"), ("/api/{model}", "/api/pull"),
                                           ("/api/blobs/{model}", "/api/blobs/"), ("/api/pull", "/api/pull"),
                                           ("/api/delete", "/api/delete")])
def test_rules_that_could_reach_model_management_are_refused(path: str, reaches: str) -> None:
    with pytest.raises(ConfigError, match=f"would reach {reaches}"):
        allowlist.parse(f'[[allow]]\npath = "{path}"\nmethods = ["POST"]\n')


def test_model_rules_elsewhere_are_fine() -> None:
    rules = allowlist.parse('[[allow]]\npath = "/v1/{model}"\nmethods = ["GET"]\n'
                                   '[[allow]]\npath = "/api/x/{model}"\nmethods = ["GET"]\n')
    assert len(rules.rules) == 2


@pytest.mark.parametrize("method, target, expected", [
    ("POST", "/v1/models/special", 0), ("GET", "/v1/models/special", 0), ("DELETE", "/v1/models/special", 405),
    ("POST", "/v1/models/other", 405), ("GET", "/v1/models/other", 0), ("GET", "/api/pull", 403),
])
def test_decide_is_the_union_of_matching_rules(method: str, target: str, expected: int) -> None:
    overlap = allowlist.parse('[[allow]]\npath = "/v1/models/{model}"\nmethods = ["GET"]\n'
                                     '[[allow]]\npath = "/v1/models/special"\nmethods = ["POST"]\n')
    assert allowlist.decide(overlap, method, target) == expected


@pytest.mark.parametrize("key, value", [("^/a b$", "1"), ("^/a$", "1 2"), ("^/a;x$", "1"), ("^/a$", "1;show"),
                                        ("^/a#$", "1"), ("^/a\n$", "1"), ("", "1"), ("^/a$", ""), ("^/\u00e9$", "1")])
def test_map_lines_refuse_anything_that_could_change_their_syntax(key: str, value: str) -> None:
    from ai_server.haproxy import maps
    with pytest.raises(maps.MapLineError):
        maps.make("x.map", "test", [(key, value)])


def test_compiled_maps_of_the_shipped_list() -> None:
    from ai_server.haproxy import maps
    routes, paths = maps.allowlist_maps(DEFAULT)
    assert routes.name == "allow-routes.map" and paths.name == "allow-paths.map"
    # {model} rules first, marked m: the proxy reads a model from the path only after those.
    assert paths.entries[0][0].startswith("^/v1/models/[A-Za-z0-9_]") and paths.entries[0][1] == "m"
    assert ("^/v1/chat/completions$", "1") in paths.entries
    assert routes.entries[2][0].startswith("^(GET)@/v1/models/[A-Za-z0-9_]")
    for item in (routes, paths):
        body = [line for line in item.text().splitlines() if not line.startswith("#")]
        assert len(body) == len(DEFAULT.rules) and all(len(line.split(" ")) == 2 for line in body)
