"""The plist and the unit, rendered from hostile paths: encoded, or refused, never broken."""

from __future__ import annotations

import plistlib
from pathlib import Path
from urllib.parse import urlparse

import pytest

from ai_server.base.errors import InstallError
from ai_server.install import launchd, systemd

HOSTILE = ["/Users/a b/Application Support", "/home/x/%h%n", "/home/x/$HOME", '/home/x/"quoted"', "/home/x/back\\slash",
           "/home/x/ünïcødé", "/home/x/<tag>&amp;"]


@pytest.mark.parametrize("path", HOSTILE)
def test_unit_keeps_every_byte_of_a_hostile_path(path: str) -> None:
    program = ["/usr/bin/python3", "-m", "ai_server", "--config-dir", path, "run"]
    text = systemd.render(program, {"AI_SERVER_STATE_DIR": path, "PATH": "/usr/bin"})
    unit = systemd.parse(text)
    assert systemd.exec_argv(unit["Service"]["ExecStart"][0]) == program
    assert systemd.environment(unit["Service"]["Environment"])["AI_SERVER_STATE_DIR"] == path
    assert len(unit["Service"]["ExecStart"]) == 1


@pytest.mark.parametrize("path", ["/home/x/new\nline", "/home/x/\rcr", "/home/x/nul\x00", "/home/x/esc\x1b"])
def test_control_characters_are_refused(path: str) -> None:
    with pytest.raises(InstallError, match="control character"):
        systemd.render(["/usr/bin/python3", "--config-dir", path], {})
    with pytest.raises(InstallError, match="control character"):
        launchd.render(["/usr/bin/python3", "--config-dir", path], {}, Path("/tmp"))


def test_unit_documentation_is_a_url_list_systemd_accepts() -> None:
    values = systemd.parse(systemd.render(["/usr/bin/python3"], {}))["Unit"]["Documentation"]
    for url in " ".join(values).split():
        parsed = urlparse(url)
        assert parsed.scheme in ("http", "https", "file", "info", "man"), url
        assert parsed.scheme != "file" or Path(parsed.path).exists(), url


@pytest.mark.parametrize("path", HOSTILE)
def test_plist_keeps_every_byte_of_a_hostile_path(path: str) -> None:
    program = ["/usr/bin/python3", "-m", "ai_server", "--config-dir", path, "run"]
    plist = plistlib.loads(launchd.render(program, {"AI_SERVER_STATE_DIR": path}, Path(path)))
    assert plist["ProgramArguments"] == program
    assert plist["EnvironmentVariables"]["AI_SERVER_STATE_DIR"] == path
    assert plist["StandardErrorPath"] == str(Path(path) / "launchd.stderr.log")
