"""ai-server.toml and allowlist.toml: defaults, and errors that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_server import config
from ai_server.access import allowlist
from ai_server.base import tomlfile
from ai_server.base.errors import ConfigError


def test_shipped_defaults_are_valid_and_match_the_contract() -> None:
    cfg = config.parse_config(tomlfile.default_text("ai-server.toml"))
    assert cfg.proxy.listen == ("tailscale",) and cfg.proxy.port == 11434
    assert cfg.engine.kind == "ollama" and cfg.engine.command == ("ollama", "serve")
    assert cfg.engine.port == 11434 and cfg.engine.env == () and cfg.warm.models == ()
    assert cfg == config.Config()  # the file and the dataclass defaults agree


def test_shipped_allowlist_is_exactly_the_seed_list() -> None:
    rules = allowlist.parse(tomlfile.default_text("allowlist.toml")).rules
    assert [(r.path, r.methods) for r in rules] == [
        ("/v1/chat/completions", ("POST",)), ("/v1/models", ("GET",)), ("/v1/models/{model}", ("GET",)),
        ("/v1/responses", ("POST",)), ("/v1/messages", ("POST",)), ("/api/version", ("GET",)),
        ("/api/tags", ("GET",)), ("/api/show", ("POST",))]


def test_missing_files_mean_defaults(tmp_path: Path) -> None:
    assert config.read(tmp_path / "nowhere") == config.Config()
    assert len(allowlist.read(tmp_path).rules) == 8


def test_llama_server_kind_gets_its_own_default_command() -> None:
    cfg = config.parse_config('[engine]\nkind = "llama-server"\n')
    assert cfg.engine.command == ("llama-server",)


def error(text: str, parse=config.parse_config) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, "ai-server.toml")
    return info.value


@pytest.mark.parametrize("text, line, key, words", [
    ("[proxy]\nport = 11434\nlisen = []\n", 3, "proxy.lisen", "unknown key"),
    ("[proxy]\nport = \"80\"\n", 2, "proxy.port", "expected an integer"),
    ("[proxy]\nport = 70000\n", 2, "proxy.port", "1 to 65535"),
    ("[proxy]\nlisten = [\"0.0.0.0\"]\n", 2, "proxy.listen", "every interface"),
    ("[proxy]\nlisten = [\"::\"]\n", 2, "proxy.listen", "every interface"),
    ("[proxy]\nlisten = [\"my-mac\"]\n", 2, "proxy.listen", "not an IP address"),
    ("[proxy]\nlisten = []\n", 2, "proxy.listen", "at least one"),
    ("[proxy]\naccess_log = 1\n", 2, "proxy.access_log", "true or false"),
    ("\n[engine]\nkind = \"vllm\"\n", 3, "engine.kind", "not an engine kind"),
    ("[engine]\nenv = { OLLAMA_HOST = \"0.0.0.0:11434\" }\n", 2, "engine.env", "would expose the engine"),
    ("[engine]\nenv = { OLLAMA_HOST = \"100.64.1.2\" }\n", 2, "engine.env", "would expose the engine"),
    ("[engine]\nkind = \"llama-server\"\ncommand = [\"llama-server\", \"--host\", \"0.0.0.0\"]\n",
     3, "engine.command", "sets --host"),
    ("[engine]\nport = true\n", 2, "engine.port", "expected an integer"),
    ("[restart]\nstartretries = 0\n", 2, "restart.startretries", "at least 1"),
    ("[restart]\nstop_timeout = 15\n[proxy]\ndrain_timeout = 10\n", 2, "restart.stop_timeout", "ExitTimeOut"),
    ("[warm]\nmodels = [\"a\", 3]\n", 2, "warm.models", "non-empty strings"),
    ("[wram]\nmodels = []\n", 1, "wram", "unknown table"),
    ("[proxy]\nport = \n", 2, None, "invalid TOML"),
])
def test_errors_name_line_and_key(text: str, line: int, key: str | None, words: str) -> None:
    err = error(text)
    assert err.line == line
    assert err.key == key
    assert words in str(err)
    assert str(err).startswith(f"ai-server.toml:{line}: ")


def test_loopback_ollama_host_in_env_is_dropped_not_used() -> None:
    cfg = config.parse_config('[engine]\nenv = { OLLAMA_HOST = "127.0.0.1:9999", OLLAMA_KEEP_ALIVE = "1h" }\n')
    assert cfg.engine.env == (("OLLAMA_KEEP_ALIVE", "1h"),)


@pytest.mark.parametrize("text, line, key, words", [
    ('[[allow]]\npath = "/v1/models"\nmethods = ["FETCH"]\n', 3, "allow[0].methods", "not a method"),
    ('[[allow]]\npath = "/v1/models"\nmethods = ["CONNECT"]\n', 3, "allow[0].methods", "not a method"),
    ('[[allow]]\npath = "/v1/models"\nmethods = []\n', 3, "allow[0].methods", "non-empty"),
    ('[[allow]]\npath = "/a"\nmethods = ["GET"]\n\n[[allow]]\npath = "v1/x"\nmethods = ["GET"]\n',
     6, "allow[1].path", "must start with /"),
    ('[[allow]]\npath = "/v1/%2e%2e/x"\nmethods = ["GET"]\n', 2, "allow[0].path", "may hold only"),
    ('[[allow]]\npath = "/v1/../api/pull"\nmethods = ["GET"]\n', 2, "allow[0].path", ". or .."),
    ('[[allow]]\npath = "/v1//models"\nmethods = ["GET"]\n', 2, "allow[0].path", "//"),
    ('[[allow]]\npath = "/v1/{name}"\nmethods = ["GET"]\n', 2, "allow[0].path", "only placeholder"),
    ('[[allow]]\npath = "/v1/x{model}"\nmethods = ["GET"]\n', 2, "allow[0].path", "whole path segment"),
    ('[[allow]]\npath = "/a"\nmethods = ["GET"]\nmethod = ["POST"]\n', 4, "allow[0].method", "unknown key"),
    ('[[allow]]\npath = "/a"\nmethods = ["GET"]\n[[allow]]\npath = "/a"\nmethods = ["POST"]\n',
     5, "allow[1].path", "already allowed"),
    ('deny = ["/api/pull"]\n', 1, "deny", "unknown key"),
])
def test_allowlist_errors(text: str, line: int, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        allowlist.parse(text, "allowlist.toml")
    assert (info.value.line, info.value.key) == (line, key)
    assert words in str(info.value)


def test_lowercase_methods_are_accepted_as_uppercase() -> None:
    rules = allowlist.parse('[[allow]]\npath = "/a"\nmethods = ["get", "GET", "post"]\n').rules
    assert rules[0].methods == ("GET", "POST")


@pytest.mark.parametrize("value, loopback", [
    ("127.0.0.1:11434", True), ("http://127.0.0.1:11434", True), ("localhost", True), ("[::1]:11434", True),
    ("0.0.0.0", False), (":11434", False), ("100.100.1.1:11434", False), ("example.com", False)])
def test_is_loopback_host(value: str, loopback: bool) -> None:
    assert config.is_loopback_host(value) is loopback


@pytest.mark.parametrize("address, words", [("::ffff:0.0.0.0", "every interface"), ("0.0.0.0", "every interface"),
                                            ("::", "every interface"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
                                            ("255.255.255.255", "broadcast"), ("::ffff:255.255.255.255", "broadcast"),
                                            ("nonsense", "not an IP address")])
def test_listen_refuses_wildcards_however_spelled(address: str, words: str) -> None:
    """::ffff:0.0.0.0 used to pass, and HAProxy bound every IPv4 interface."""
    with pytest.raises(ConfigError, match=f"proxy.listen: .*{words}"):
        config.parse_config(f'[proxy]\nlisten = ["{address}"]\n')


def test_listen_addresses_are_normalised() -> None:
    parsed = config.parse_config('[proxy]\nlisten = ["::ffff:100.64.0.1", "100.64.0.1", "fd7a:115c:a1e0:0::1"]\n')
    assert parsed.proxy.listen == ("100.64.0.1", "fd7a:115c:a1e0::1")


@pytest.mark.parametrize("name", ["evil name", "a\nb", "x;y", "-bad.example", "a..b", "*.example", "é.example", ""])
def test_server_names_must_be_host_names(name: str) -> None:
    with pytest.raises(ConfigError, match="proxy.server_names"):
        config.parse_config(f'[proxy]\nserver_names = [{tomlfile.toml_string(name)}]\n')


def test_server_names_are_lower_case_without_the_root_dot() -> None:
    parsed = config.parse_config('[proxy]\nserver_names = ["AI.Example.com.", "100.64.0.9"]\n')
    assert parsed.proxy.server_names == ("ai.example.com", "100.64.0.9")


def test_config_files_must_be_regular_and_small(tmp_path) -> None:
    import os
    fifo = tmp_path / "ai-server.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        config.read(tmp_path)  # returns at once: never waits for a writer
    fifo.unlink()
    fifo.write_bytes(b"#" * (tomlfile.MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="at most"):
        config.read(tmp_path)
    fifo.unlink()
    (tmp_path / "ai-server.toml").mkdir()
    with pytest.raises(ConfigError, match="not a regular file|cannot read"):
        config.read(tmp_path)
