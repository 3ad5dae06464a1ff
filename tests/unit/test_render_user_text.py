"""What render.py's docstring claims: the only configuration text in haproxy.cfg is a front's
node names (validated), and node addresses are the parsed IPs, written back by ipaddress."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ai_server import config, haproxy
from ai_server.access import allowlist
from ai_server.access.clients import Clients
from ai_server.base import tomlfile
from ai_server.base.errors import ConfigError
from ai_server.fleet import nodes
from ai_server.haproxy import maps
from ai_server.haproxy.render import RenderInput, render

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}", fullmatch=True).filter(lambda n: n != config.LOCAL_NODE)


def node_config(name: str, url: str) -> str:
    return f'[engine]\nkind = "none"\n[[node]]\nname = {tomlfile.toml_string(name)}\nurl = "{url}"\n'


def fronting(name: str, url: str) -> RenderInput:
    return RenderInput(config.parse_config(node_config(name, url)), ("100.64.0.1",))


def test_a_node_address_is_written_as_the_parsed_ip_not_as_typed(tmp_path: Path) -> None:
    typed = "http://[FD7A:115C:A1E0:0000::0002]:08080/"
    spec = fronting("Z.9_-x", typed)
    text = render(spec)
    assert "server Z.9_-x [fd7a:115c:a1e0::2]:8080 check" in text
    assert "FD7A" not in text and "0000::" not in text and ":08080" not in text and typed.rstrip("/") not in text
    allow = allowlist.parse(tomlfile.default_text("allowlist.toml"))
    files = [*maps.every_map(allow, ("100.64.0.1",), 11434, (), Clients(), (), True, ()),
             *maps.node_maps(nodes.assign({}, {}), nodes.union([]))]
    assert haproxy.install(HAPROXY, spec, files, tmp_path)  # and HAProxy takes it


def token(text: str) -> re.Pattern[str]:
    """`text` standing alone (or as a backend's node_NAME): not inside a longer name, number or address."""
    return re.compile(rf"(?:(?<=node_)|(?<![A-Za-z0-9._:-])){re.escape(text)}(?![A-Za-z0-9._-])")


@settings(max_examples=60, deadline=None)
@given(first=NAME, second=NAME)
def test_node_names_and_addresses_are_the_only_configuration_text(first: str, second: str) -> None:
    """Two configs that differ only in the node's name and address render to texts that differ
    only there: no other piece of what the user wrote reaches haproxy.cfg."""
    one = render(fronting(first, "http://100.64.0.2:11434"))
    two = render(fronting(second, "http://[fd7a:115c:a1e0::9]:8080"))
    assume(first.lower() != second.lower() and not token(first).search(two) and not token(second).search(one))
    assert token(first).search(one)
    swapped = token(first).sub(second, one.replace("100.64.0.2:11434", "[fd7a:115c:a1e0::9]:8080"))
    assert swapped == two


@pytest.mark.parametrize("name", ["$HOME", "a'b", 'a"b', "a#b", "a b", "a{b}", "a\nb", "a%b", "x" * 33, "-a"])
def test_node_names_haproxy_would_read_as_syntax_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="letters, digits"):
        config.parse_config(node_config(name, "http://100.64.0.2:1"))
