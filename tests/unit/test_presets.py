"""`ai-server allow preset`: named rule sets that keep the file's comments and never reach
model management."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ai_server.access import allowlist, presets
from ai_server.base.errors import AiServerError
from ai_server.base.tomlfile import default_text


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_rule_is_a_valid_rule_that_reaches_no_model_management(name: str) -> None:
    preset = presets.PRESETS[name]
    rules = allowlist.Allowlist(tuple(allowlist.Rule(r.path, r.methods) for r in preset.rules))
    for rule in preset.rules:
        assert allowlist.check_rule_path(rule.path) is None, rule.path
        assert set(rule.methods) <= set(allowlist.METHODS)
    for path in allowlist.MANAGEMENT_PROBES:
        for method in allowlist.METHODS:
            assert allowlist.decide(rules, method, path) == 403, (name, method, path)


def test_the_four_presets_of_the_contract() -> None:
    assert list(presets.PRESETS) == ["openai", "anthropic", "ollama-native", "embeddings"]
    native = {r.path for r in presets.PRESETS["ollama-native"].rules}
    assert {"/api/chat", "/api/generate", "/api/embed", "/api/show", "/api/tags"} <= native


def test_a_preset_adds_its_rules_once_and_keeps_the_comments(tmp_path: Path) -> None:
    target = tmp_path / "allowlist.toml"
    target.write_text(default_text("allowlist.toml"))
    said = presets.apply(target, "ollama-native")
    assert "allowed POST /api/chat" in said and "/api/show already allows POST" in said
    text = target.read_text()
    assert "# Anthropic-compatible API: Claude Code, the Anthropic SDKs." in text  # the shipped comments stay
    assert "# preset ollama-native: chat, NDJSON streaming" in text
    rules = {r.path: r.methods for r in allowlist.parse(text).rules}
    assert rules["/api/chat"] == ("POST",) and rules["/api/tags"] == ("GET", "HEAD")
    assert rules["/v1/chat/completions"] == ("POST",)  # nothing taken away
    again = presets.apply(target, "ollama-native")
    assert all("already allows" in line for line in again)
    assert target.read_text() == text


def test_a_missing_file_starts_from_the_shipped_list(tmp_path: Path) -> None:
    target = tmp_path / "allowlist.toml"
    presets.apply(target, "embeddings")
    paths = {r.path for r in allowlist.parse(target.read_text()).rules}
    assert {"/v1/embeddings", "/api/embed", "/v1/messages"} <= paths


def test_a_broken_file_is_left_untouched(tmp_path: Path) -> None:
    target = tmp_path / "allowlist.toml"
    target.write_text('[[allow]]\npath = "/a b"\nmethods = ["GET"]\n')
    with pytest.raises(AiServerError):
        presets.apply(target, "openai")
    assert target.read_text() == '[[allow]]\npath = "/a b"\nmethods = ["GET"]\n'


def test_an_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(AiServerError, match="openai, anthropic, ollama-native, embeddings"):
        presets.get("ollama")


def test_the_command_lists_and_refuses_in_one_line(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ai_server", "--config-dir", str(tmp_path), "allow", "preset", *args],
                              capture_output=True, text=True, timeout=30)

    listed = cli("--list")
    assert listed.returncode == 0 and "ollama-native:" in listed.stdout and "/api/embed" in listed.stdout
    assert not (tmp_path / "allowlist.toml").exists()
    unknown = cli("ollama")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
    bare = cli()
    assert bare.returncode == 1 and bare.stderr.strip().startswith("ai-server: name a preset")
    assert "Traceback" not in bare.stderr + unknown.stderr
    added = cli("anthropic")
    assert added.returncode == 0 and "allowed POST /v1/messages/count_tokens" in added.stdout


def test_removing_what_a_preset_added_gives_the_file_back(tmp_path: Path) -> None:
    target = tmp_path / "allowlist.toml"
    original = default_text("allowlist.toml")
    target.write_text(original)
    presets.apply(target, "embeddings")
    for rule in reversed(presets.PRESETS["embeddings"].rules):
        allowlist.remove_rule(target, rule.path)
    assert target.read_text() == original
