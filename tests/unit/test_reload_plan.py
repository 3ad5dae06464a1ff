"""desired.plan: which children and which parts of the proxy a change touches (pure)."""

from __future__ import annotations

import pytest

from ai_server import config
from ai_server.access import allowlist
from ai_server.base import tomlfile
from ai_server.base.errors import ConfigError
from ai_server.desired import Desired, plan

ALLOW = allowlist.parse(tomlfile.default_text("allowlist.toml"))


def desired(text: str = "", allow: allowlist.Allowlist = ALLOW, addresses: tuple[str, ...] = ("100.64.0.1",)) -> Desired:
    return Desired(config.parse_config(text), allow, addresses)


def test_nothing_changed() -> None:
    p = plan(desired(), desired())
    assert p.changed() == [] and p.engine is None and not p.policy


def test_allowlist_only_swaps_rules() -> None:
    fewer = allowlist.Allowlist(ALLOW.rules[:3])
    p = plan(desired(), desired(allow=fewer))
    assert (p.rules, p.proxy, p.engine) == (True, False, None) and p.changed() == ["allowlist"]


@pytest.mark.parametrize("text", ["[proxy]\nmax_body_mb = 2\n", "[engine]\nport = 9999\n", "[proxy]\nport = 1234\n"])
def test_proxy_settings_reload_the_proxy(text: str) -> None:
    p = plan(desired(), desired(text))
    assert p.proxy and not p.rules


@pytest.mark.parametrize("text", ['[engine]\nenv = { OLLAMA_KEEP_ALIVE = "1h" }\n',
                                  '[engine]\ncommand = ["ollama", "serve", "-x"]\n',
                                  '[engine]\nkind = "llama-server"\n'])
def test_how_the_engine_runs_restarts_it(text: str) -> None:
    assert plan(desired(), desired(text)).engine == "engine config changed"


@pytest.mark.parametrize("text, policy", [("[engine]\nstart_timeout = 5\n", True), ("[restart]\nbackoff_cap = 5\n", True),
                                          ("[engine]\ndrain_timeout = 5\n", False)])  # read when a drain begins
def test_timeouts_and_policy_apply_without_a_restart(text: str, policy: bool) -> None:
    p = plan(desired(), desired(text))
    assert p.engine is None and p.policy == policy


def test_new_address_reloads_the_proxy_and_without_it_moves_the_engine() -> None:
    p = plan(desired(), desired(addresses=("100.64.0.2",)))
    assert p.proxy and p.addresses and p.engine is None
    off = "[proxy]\nenabled = false\n"
    p = plan(desired(off), desired(off, addresses=("100.64.0.2",)))
    assert not p.proxy and p.engine == "listen address changed"


def test_turning_the_proxy_off_needs_a_restart_of_ai_server() -> None:
    with pytest.raises(ConfigError, match="proxy.enabled"):
        plan(desired(), desired("[proxy]\nenabled = false\n"))


def test_log_rotation_change() -> None:
    assert plan(desired(), desired("[log]\nmax_mb = 1\n")).changed() == ["log"]
