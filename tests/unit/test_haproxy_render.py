"""The generated haproxy.cfg: readable, accepted by the real `haproxy -c`, logs parseable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ai_server import config, haproxy

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def spec(tmp_path: Path, cfg_text: str = "", addresses: tuple[str, ...] = ("127.0.0.2",)) -> haproxy.RenderInput:
    return haproxy.RenderInput(config.parse_config(cfg_text), addresses, tmp_path / "log.sock", tmp_path / "stats.sock",
                               tmp_path / "allow-paths.map", tmp_path / "allow-routes.map")


def render(tmp_path: Path, cfg_text: str = "", addresses: tuple[str, ...] = ("127.0.0.2",)) -> str:
    return haproxy.render(spec(tmp_path, cfg_text, addresses))


@pytest.mark.parametrize("cfg_text, allow_text, addresses", [
    ("", None, ("127.0.0.2",)),
    ("", None, ("100.64.0.1", "fd7a:115c:a1e0::1")),
    ('[proxy]\naccess_log = false\nmax_body_mb = 1\n[engine]\nkind = "llama-server"\nport = 8080\n', None, ("127.0.0.2",)),
    ("", "", ("127.0.0.2",)),  # empty allowlist: everything 403
    ("", '[[allow]]\npath = "/api/{model}/x.y"\nmethods = ["GET", "HEAD", "DELETE"]\n', ("::1",)),
])
def test_generated_config_passes_haproxy_check(tmp_path: Path, cfg_text, allow_text, addresses) -> None:
    allow = config.parse_allowlist(allow_text if allow_text is not None else config.default_text("allowlist.toml"))
    target = tmp_path / "haproxy.cfg"
    assert haproxy.install(HAPROXY, spec(tmp_path, cfg_text, addresses), allow, target)  # `haproxy -c` passed
    assert target.read_text() == render(tmp_path, cfg_text, addresses)
    assert (tmp_path / "allow-paths.map").read_text().count("\n^/") == len(allow.rules)
    # The same settings with other rules: only the maps change, haproxy.cfg stays.
    assert not haproxy.install(HAPROXY, spec(tmp_path, cfg_text, addresses), config.Allowlist(), target)
    assert not list(tmp_path.glob("*.new")) and not list(tmp_path.glob("*.trial"))


def test_rejected_config_is_not_swapped_in(tmp_path: Path) -> None:
    from ai_server.errors import HaproxyConfigError
    allow = config.parse_allowlist(config.default_text("allowlist.toml"))
    target = tmp_path / "haproxy.cfg"
    target.write_text("good")
    (tmp_path / "allow-paths.map").write_text("old")
    with pytest.raises(HaproxyConfigError, match="haproxy -c rejected"):
        haproxy.install("/bin/false", spec(tmp_path), allow, target)  # an `haproxy -c` that says no
    assert target.read_text() == "good" and (tmp_path / "allow-paths.map").read_text() == "old"
    assert not list(tmp_path.glob("*.new")) and not list(tmp_path.glob("*.trial"))
    bogus = tmp_path / "bogus.cfg"
    bogus.write_text("frontend x\n    bind :1\n    bogus directive\n")
    with pytest.raises(HaproxyConfigError, match="bogus"):
        haproxy.check(HAPROXY, bogus)


def test_config_holds_what_the_proxy_must_do(tmp_path: Path) -> None:
    text = render(tmp_path, "[engine]\nport = 11500\n[proxy]\nport = 11434\n")
    assert "map_reg(allow-paths.map,NONE)" in text and "default-path config" in text
    assert "bind ipv4@127.0.0.2:11434" in text
    assert "http-request set-header Host 127.0.0.1:11500" in text
    assert "server engine 127.0.0.1:11500 check" in text
    assert "option forwardfor" in text
    assert "0.0.0.0" not in text and "bind :" not in text
    assert text.count("\n    #") > 15  # commented for a human reader


def test_parse_access_log_line() -> None:
    line = ("ai-server-request 100.64.0.7 51234 200 1532 301 0 0 1 15 2048 ---- engine POST "
            "/v1/messages?beta=true")
    fields = haproxy.parse_log(line)
    assert fields == {
        "method": "POST", "path": "/v1/messages", "query": "beta=true", "status": 200, "client": "100.64.0.7",
        "client_port": 51234, "bytes_out": 1532, "bytes_in": 301, "forwarded": True, "termination": "----",
        "t_request_ms": 0, "t_queue_ms": 0, "t_connect_ms": 1, "t_response_ms": 15, "t_total_ms": 2048}
    assert haproxy.parse_log("Server engine/engine is DOWN") is None
    weird = haproxy.parse_log("ai-server-request 127.0.0.1 1 400 0 0 -1 -1 -1 -1 0 PR-- ai_server <BADREQ> /a#20b")
    assert weird is not None and weird["path"] == "/a#20b" and weird["forwarded"] is False


def test_state_dir_with_a_space_like_macos() -> None:
    import tempfile
    # Short: unix socket paths are limited to ~104 bytes.
    state = Path(tempfile.mkdtemp(prefix="ais-", dir="/tmp")) / "Application Support" / "ai-server"
    state.mkdir(parents=True)
    allow = config.parse_allowlist(config.default_text("allowlist.toml"))
    assert haproxy.install(HAPROXY, spec(state), allow, state / "haproxy.cfg")
    assert f'stats socket "{state}/stats.sock"' in (state / "haproxy.cfg").read_text()
