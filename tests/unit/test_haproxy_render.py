"""The generated haproxy.cfg and maps: readable, accepted by the real `haproxy -c`, free of user text."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from ai_server import config, haproxy
from ai_server.access import allowlist
from ai_server.access.clients import Clients
from ai_server.base import tomlfile
from ai_server.base.errors import HaproxyConfigError
from ai_server.haproxy import maps
from ai_server.haproxy.logfmt import parse_log
from ai_server.haproxy.render import HEADROOM, RenderInput, render

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
DEFAULT = allowlist.parse(tomlfile.default_text("allowlist.toml"))


def spec(cfg_text: str = "", addresses: tuple[str, ...] = ("127.0.0.2",)) -> RenderInput:
    return RenderInput(config.parse_config(cfg_text), addresses)


def map_files(allow: allowlist.Allowlist = DEFAULT, addresses: tuple[str, ...] = ("127.0.0.2",),
              names: tuple[str, ...] = ()) -> list[maps.MapFile]:
    # (+ the llama-server /v1/models answer, which ProxyChild.maps adds for that engine)
    return maps.every_map(allow, addresses, 11434, names, Clients(), (), ollama=True) + [
        maps.engine_models_map('{"object":"list","data":[]}')]


@pytest.mark.parametrize("cfg_text, allow_text, addresses", [
    ("", None, ("127.0.0.2",)),
    ("", None, ("100.64.0.1", "fd7a:115c:a1e0::1")),
    ('[proxy]\naccess_log = false\nmax_body_mb = 1\n[engine]\nkind = "llama-server"\nport = 8080\n', None, ("127.0.0.2",)),
    ("[proxy]\nmax_body_mb = 200\n", None, ("127.0.0.2",)),  # the largest allowed
    ("", "", ("127.0.0.2",)),  # empty allowlist: everything 403
    ("", '[[allow]]\npath = "/api/x/{model}/x.y"\nmethods = ["GET", "HEAD", "DELETE"]\n', ("::1",)),
])
def test_generated_config_passes_haproxy_check(tmp_path: Path, cfg_text: str, allow_text: str | None,
                                               addresses: tuple[str, ...]) -> None:
    allow = allowlist.parse(allow_text if allow_text is not None else tomlfile.default_text("allowlist.toml"))
    files = map_files(allow, addresses, ("mymac.tail1234.ts.net", "mymac"))
    assert haproxy.install(HAPROXY, spec(cfg_text, addresses), files, tmp_path)  # `haproxy -c` passed
    assert (tmp_path / "haproxy.cfg").read_text() == render(spec(cfg_text, addresses))
    assert (tmp_path / maps.ALLOW_PATHS).read_text().count("\n^/") == len(allow.rules)
    # The same settings with other rules: only the maps change, haproxy.cfg stays.
    assert not haproxy.install(HAPROXY, spec(cfg_text, addresses), map_files(allowlist.Allowlist()), tmp_path)
    assert not list(tmp_path.glob("*.new")) and not list(tmp_path.glob("*.trial"))


def test_rejected_config_is_not_swapped_in(tmp_path: Path) -> None:
    target = tmp_path / "haproxy.cfg"
    target.write_text("good")
    (tmp_path / maps.ALLOW_PATHS).write_text("old")
    with pytest.raises(HaproxyConfigError, match="haproxy -c rejected"):
        haproxy.install("/bin/false", spec(), map_files(), tmp_path)  # an `haproxy -c` that says no
    assert target.read_text() == "good" and (tmp_path / maps.ALLOW_PATHS).read_text() == "old"
    assert not list(tmp_path.glob("*.new")) and not list(tmp_path.glob("*.trial"))
    bogus = tmp_path / "bogus.cfg"
    bogus.write_text("frontend x\n    bind :1\n    bogus directive\n")
    with pytest.raises(HaproxyConfigError, match="bogus"):
        haproxy.check(HAPROXY, bogus)


def test_config_holds_what_the_proxy_must_do() -> None:
    text = render(spec("[engine]\nport = 11500\n[proxy]\nport = 11434\nmax_body_mb = 2\n"))
    assert "var(txn.path),map_reg(allow-paths.map)" in text and "default-path config" in text
    assert "bind ipv4@127.0.0.2:11434 proto h1" in text
    assert "http-request set-header Host 127.0.0.1:11500" in text
    assert "server engine 127.0.0.1:11500 check" in text
    dropped = next(line for line in text.splitlines() if "del-header ^(" in line)
    assert "option forwardfor" in text and "|forwarded|" in dropped and dropped.endswith(")$ -m reg")
    assert "|upgrade|" in dropped and "|x-real-ip|" in dropped
    assert f"tune.bufsize {2 * 1024 * 1024 + HEADROOM}" in text
    assert "http-request wait-for-body" in text and "status 421" in text
    assert "0.0.0.0" not in text and "bind :" not in text
    assert text.count("\n    #") > 20  # commented for a human reader


def test_no_user_text_reaches_the_config() -> None:
    """Paths are relative to the state dir (HAProxy runs there): a folder named with $, quotes
    or spaces never meets HAProxy's parser, which expands $VAR even inside single quotes."""
    import re
    text = render(spec())
    for word in ("/tmp", "/home", "/Users", "Application Support"):
        assert word not in text, word
    assert re.search(r"\$[A-Za-z_{(]", text) is None  # nothing HAProxy would take for a variable
    assert "stats socket unix@haproxy.sock" in text and "log fd@3 " in text


def test_state_dir_with_dollars_quotes_and_spaces(tmp_path: Path) -> None:
    # Short: unix socket paths are limited to ~104 bytes.
    state = Path(tempfile.mkdtemp(prefix="ais-", dir="/tmp")) / "App Support $HOME 'q' \"d\"#x"
    state.mkdir(parents=True)
    assert haproxy.install(HAPROXY, spec(), map_files(), state)
    assert (state / "haproxy.cfg").exists()


def test_listen_addresses_are_rendered_as_parsed() -> None:
    text = render(spec(addresses=("100.64.0.1", "fd7a:115c:a1e0::1")))
    assert "bind ipv4@100.64.0.1:11434 proto h1" in text and "bind ipv6@fd7a:115c:a1e0::1:11434 proto h1" in text


def test_host_forms() -> None:
    forms = maps.host_forms(("100.64.0.1", "fd7a::1"), 11434, ("MyMac.tail1234.ts.net.",))
    assert forms == ["100.64.0.1", "100.64.0.1:11434", "[fd7a::1]", "[fd7a::1]:11434", "mymac.tail1234.ts.net",
                     "mymac.tail1234.ts.net:11434", "mymac.tail1234.ts.net.", "mymac.tail1234.ts.net.:11434"]


def test_parse_access_log_line() -> None:
    line = ("ai-server-request 1796284065-77-12 1796284065000123 100.64.0.7 51234 200 1532 301 0 0 1 15 2048 ---- m3 "
            "studio-2:backup laptop qwen2.5-coder:7b interactive m=sse,ui=5 POST /v1/messages?beta=true")
    fields = parse_log(line)
    assert fields == {
        "id": "1796284065-77-12", "t_in_us": 1796284065000123, "meter": "m=sse,ui=5", "backend": "m3",
        "server": "studio-2:backup", "method": "POST", "path": "/v1/messages", "query": "beta=true", "status": 200,
        "client": "100.64.0.7",
        "who": "laptop", "model": "qwen2.5-coder:7b", "priority": "interactive", "queue": False, "node": "studio-2",
        "client_port": 51234, "bytes_out": 1532, "bytes_in": 301, "forwarded": True, "termination": "----",
        "t_request_ms": 0, "t_queue_ms": 0, "t_connect_ms": 1, "t_response_ms": 15, "t_total_ms": 2048}
    assert parse_log("Server engine/engine is DOWN") is None
    weird = parse_log("ai-server-request 1-2-3 - 127.0.0.1 1 400 0 0 -1 -1 -1 -1 0 PR-- ai_server <NOSRV> - - - - "
                      "<BADREQ> /a#20b")
    assert weird is not None and weird["path"] == "/a#20b" and weird["forwarded"] is False
    assert weird["who"] == "unknown" and weird["model"] is None and weird["node"] is None
    assert weird["t_in_us"] is None and weird["meter"] is None


@pytest.mark.parametrize("fronting", [False, True])
def test_every_map_is_referenced_by_the_config(fronting: bool) -> None:
    """A map the config does not name cannot be swapped live (the runtime API refuses it)."""
    text = render(spec('[[node]]\nname = "a"\nurl = "http://127.0.0.5:11434"\n' if fronting else ""))
    files = maps.every_map(DEFAULT, ("127.0.0.2",), 11434, (), Clients(), (), True, ())
    files += maps.node_maps({}, {"v1": "-", "tags": "-", "list": "[]"}) if fronting else []
    assert any(f.name == maps.NODE_MODELS for f in files) == fronting
    for item in files:
        assert f"({item.name})" in text or f"({item.name}," in text, item.name
