"""haproxy.install: haproxy.cfg rendered once, and the text `haproxy -c` passed is the text that runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ai_server import config, haproxy
from ai_server.access import allowlist
from ai_server.access.clients import Clients
from ai_server.base import tomlfile
from ai_server.base.errors import HaproxyConfigError
from ai_server.haproxy import maps
from ai_server.haproxy.render import RenderInput

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def spec() -> RenderInput:
    return RenderInput(config.parse_config(""), ("127.0.0.2",))


def map_files() -> list[maps.MapFile]:
    allow = allowlist.parse(tomlfile.default_text("allowlist.toml"))
    return maps.every_map(allow, ("127.0.0.2",), 11434, (), Clients(), (), ollama=True) + [
        maps.engine_models_map('{"object":"list","data":[]}')]


def test_the_config_is_rendered_once_and_what_was_checked_is_what_runs(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    renders: list[str] = []
    checked: dict[str, str] = {}
    real_render, real_check = haproxy.render, haproxy.check

    def counting_render(given: RenderInput) -> str:
        renders.append(text := real_render(given))
        return text

    def recording_check(program: str, path: Path) -> None:
        real_check(program, path)  # the real `haproxy -c`
        checked.update({p.name: p.read_text() for p in path.parent.iterdir()})

    monkeypatch.setattr(haproxy, "render", counting_render)
    monkeypatch.setattr(haproxy, "check", recording_check)
    assert haproxy.install(HAPROXY, spec(), map_files(), tmp_path)
    assert len(renders) == 1
    assert checked["haproxy.cfg"] == (tmp_path / "haproxy.cfg").read_text() == renders[0]
    for item in map_files():  # each map checked under the name the running proxy reads
        assert checked[item.name] == (tmp_path / item.name).read_text() == item.text()
    assert checked[maps.HOLD] == (tmp_path / maps.HOLD).read_text()  # the state dir's own, linked in


def test_nothing_is_left_behind_and_nothing_replaced_when_the_check_fails(tmp_path: Path) -> None:
    (tmp_path / "haproxy.cfg").write_text("good")
    (tmp_path / maps.ALLOW_PATHS).write_text("old")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(HaproxyConfigError, match="haproxy -c rejected"):
        haproxy.install("/bin/false", spec(), map_files(), tmp_path)
    after = sorted(p.name for p in tmp_path.iterdir())
    assert set(after) - set(before) <= {maps.HOLD}  # the hold map, written once for every config
    assert (tmp_path / "haproxy.cfg").read_text() == "good" and (tmp_path / maps.ALLOW_PATHS).read_text() == "old"
    assert haproxy.install(HAPROXY, spec(), map_files(), tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(haproxy.TRIAL_DIR)]


def test_a_link_planted_in_the_state_dir_is_not_followed_into_the_trial(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path.parent / f"{tmp_path.name}-secret"
    secret.write_text("not HAProxy's")
    (tmp_path / "tls.pem").symlink_to(secret)
    seen: list[str] = []
    real_check = haproxy.check

    def recording_check(program: str, path: Path) -> None:
        seen.extend(p.name for p in path.parent.iterdir())
        real_check(program, path)

    monkeypatch.setattr(haproxy, "check", recording_check)
    assert haproxy.install(HAPROXY, spec(), map_files(), tmp_path)
    assert "tls.pem" not in seen and "haproxy.cfg" in seen
