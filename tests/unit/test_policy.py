"""access/policy.py, the model of the proxy's request policy (pure), and the maps it is
compiled into: names matched exactly, ids in the regexes, the order that decides before the
body. The running proxy is held to the same function in tests/integration/test_policy_model.py."""

from __future__ import annotations

import re

import pytest

from ai_server.access import allowlist, clients, policy
from ai_server.access.clients import Clients
from ai_server.access.policy import Counts, Limits, Request, decide
from ai_server.access.tailnet import Detection
from ai_server.access.tailscale import Peer
from ai_server.base import tomlfile
from ai_server.haproxy import lua, maps, meter

ALLOW = allowlist.parse(tomlfile.default_text("allowlist.toml"))
SUFFIX = "tail1234.ts.net"
LAPTOP = Peer(("100.64.0.2",), "Alice's MacBook", f"alices-macbook.{SUFFIX}", "alice@example.com", (), "nL1", SUFFIX)
BOB = Peer(("100.64.0.3",), "alices-macbook", f"bobs-pc.{SUFFIX}", "bob@example.com", (), "nB1", SUFFIX)
NET = Detection(("100.64.0.1",), peers=(LAPTOP, BOB), peers_known=True)
LIMITS = Limits(hosts=frozenset(maps.host_forms(("100.64.0.1",), 11434, ())))
TEXT = """
[unknown]
policy = "deny"
[[client]]
name = "laptop"
device = "alices-macbook"
models = ["smollm2:*"]
rpm = 2
"""


def chat(model: str, source: str = "100.64.0.2", **headers: str) -> Request:
    body = ('{"messages":[],"model":"' + model + '"}').encode()
    return Request("POST", "/v1/chat/completions", (("Host", "100.64.0.1:11434"), ("Content-Length", str(len(body))),
                                                    *headers.items()), body, source)


def test_the_laptop_gets_its_policy_and_a_device_named_like_it_does_not() -> None:
    known = clients.parse(TEXT)
    assert decide(chat("smollm2:135m"), NET, known, ALLOW, LIMITS) == (0, "")
    assert decide(chat("qwen:7b"), NET, known, ALLOW, LIMITS) == (403, "model")
    assert decide(chat("smollm2:135m", "100.64.0.3"), NET, known, ALLOW, LIMITS) == (403, "unknown")  # HostName: nothing


def test_everything_but_the_model_is_decided_before_the_body() -> None:
    """A denied device, a client over its rate, a body over the budget: refused on headers."""
    known = clients.parse(TEXT)
    for source, counts, expected in (("100.64.0.3", Counts(), (403, "unknown")),
                                     ("100.64.0.2", Counts(last_minute={"laptop": 2}), (429, "rpm"))):
        headers_only = Request("POST", "/v1/chat/completions", (("Host", "100.64.0.1"), ("Content-Length", "999999")),
                               b"", source)
        assert decide(headers_only, NET, known, ALLOW, LIMITS, counts) == expected
    big = Request("POST", "/v1/chat/completions", (("Host", "100.64.0.1"), ("Content-Length", str(20 << 20))), b"",
                  "100.64.0.2")
    assert decide(big, NET, known, ALLOW, LIMITS, Counts(bodies={"b4": 4})) == (503, "bodies")


def test_no_peer_map_yet_is_503_not_unknown() -> None:
    known = clients.parse(TEXT.replace('policy = "deny"', 'policy = "allow"'))
    blind = Detection(("100.64.0.1",), peers_known=False)
    assert decide(chat("qwen:7b"), blind, known, ALLOW, LIMITS) == (503, "identity")
    # Off the tailnet (a loopback listener) nobody is a peer anyway: [unknown] applies.
    local = Request("GET", "/v1/models", (("Host", "localhost"),), b"", "127.0.0.1", "127.0.0.1")
    assert decide(local, blind, known, ALLOW, LIMITS) == (0, "")
    # Nothing depends on peers: nothing to wait for.
    assert decide(chat("qwen:7b"), blind, Clients(), ALLOW, LIMITS) == (0, "")


def test_a_caller_the_peer_map_does_not_show_is_not_known_never_unknown() -> None:
    """A peer map the CLI gave that is empty (or stale) made every device "unknown": with
    [unknown] allow, the laptop limited to smollm2 got [defaults], any model. Tailscale carries
    packets only from nodes in this machine's map, so an address it does not show is a view
    that lost it: 503, as with no map at all. A peer no entry names is still unknown, and this
    machine's own address too. (Fails on 1970274: (0, "") for the emptied map.)"""
    known = clients.parse(TEXT.replace('policy = "deny"', 'policy = "allow"'))
    emptied = Detection(("100.64.0.1",), peers=(), peers_known=True)
    assert decide(chat("qwen:7b"), emptied, known, ALLOW, LIMITS) == (503, "identity")
    assert decide(chat("qwen:7b", source="100.64.0.3"), NET, known, ALLOW, LIMITS) == (0, "")   # bob: unknown
    assert decide(chat("qwen:7b", source="100.64.0.1"), emptied, known, ALLOW, LIMITS) == (0, "")  # itself
    assert decide(chat("qwen:7b", source="100.64.0.77"), NET, known, ALLOW, LIMITS) == (503, "identity")
    # Nothing depends on peers: an address the map does not show is just unknown.
    assert decide(chat("qwen:7b"), emptied, Clients(), ALLOW, LIMITS) == (0, "")


def test_a_front_is_believed_on_a_tailnet_listener_only_and_an_unknown_name_is_unknown() -> None:
    known = clients.parse(TEXT)
    limits = Limits(hosts=LIMITS.hosts, fronts=frozenset({"100.64.0.9", "127.0.0.1"}))
    said = chat("smollm2:135m", "100.64.0.9", **{"X-Ai-Server-Client": "laptop"})
    assert decide(said, NET, known, ALLOW, limits) == (0, "")
    assert decide(chat("x", "100.64.0.9", **{"X-Ai-Server-Client": "ghost"}), NET, known, ALLOW, limits) == (403, "unknown")
    assert decide(chat("x", "100.64.0.9", **{"X-Ai-Server-Client": "front"}), NET, known, ALLOW, limits) == (0, "")
    loopback = Request("GET", "/v1/models", (("Host", "localhost"), ("X-Ai-Server-Client", "laptop")), b"", "127.0.0.1",
                       "127.0.0.1")
    assert decide(loopback, NET, known, ALLOW, limits) == (403, "front")


def test_unknown_devices_are_counted_each_on_its_own() -> None:
    known = clients.parse("[defaults]\nrpm = 1\n")
    one = policy.evaluate(chat("a", "100.64.0.7"), NET, known, ALLOW, LIMITS)
    two = policy.evaluate(chat("a", "100.64.0.8"), NET, known, ALLOW, LIMITS, Counts(last_minute={one.track or "": 1}))
    assert one.track == "unknown@100.64.0.7" and two.status == 0


def test_body_classes_never_hold_more_than_the_budget_together() -> None:
    for max_mb, budget_mb in ((32, 512), (1, 1), (200, 512), (0.5, 3), (64, 100)):
        small, *classes = policy.body_classes(int(max_mb * 2**20), budget_mb * 2**20)
        assert small == ("b0", policy.SMALL_BODY, policy.SMALL_BODIES)
        assert classes[-1][1] == int(max_mb * 2**20) and [c[0] for c in classes] == [f"b{i}" for i in range(1, len(classes) + 1)]
        # Twice each: the buffer and the model check's copy.
        assert sum(2 * upper * limit for _, upper, limit in classes) <= max(budget_mb * 2**20, len(classes) * 2 * max_mb * 2**20)
    assert [(u >> 10, n) for _, u, n in policy.body_classes(32 << 20, 512 << 20)] == [
        (64, 1024), (1 << 10, 64), (4 << 10, 16), (16 << 10, 4), (32 << 10, 2)]


def test_small_bodies_are_counted_too() -> None:
    """Attacker's finding A on issue 16: bodies of 64 KiB or less were counted nowhere, and
    thousands judged at once beside full body classes took Lua out of memory. They are b0 now,
    1024 at once, within what tune.lua.maxmem leaves beside body_memory_mb."""
    classes = policy.body_classes(32 << 20, 512 << 20)
    assert policy.body_class(1, classes) == ("b0", 1024) == policy.body_class(64 * 1024, classes)
    assert policy.body_class(64 * 1024 + 1, classes) == ("b1", 64) and policy.body_class(0, classes) is None


def test_lua_memory_has_room_for_every_body_the_classes_admit() -> None:
    """Attacker's pass 9: every class admits one body whatever its share, so max_body_mb 100
    with body_memory_mb 100 admitted copies of 262 MiB into a Lua capped at 228 (the budget
    and room): the worker aborted. tune.lua.maxmem is what the classes admit now, with the
    metering filter's copy of each answer in flight and room beside."""
    for max_mb, budget_mb in ((32, 512), (100, 100), (200, 200), (1, 1), (200, 8)):
        admitted = sum(upper * limit for _, upper, limit in policy.body_classes(max_mb << 20, budget_mb << 20))
        for answers in (1, 4, 64):
            room = lua.maxmem_mb(max_mb << 20, budget_mb << 20, answers) << 20
            assert room >= admitted + (answers + 1) * meter.MAX_JSON + (lua.LUA_HEADROOM_MB << 20)


# -- the maps ---------------------------------------------------------------------------------

NAMES = ["a", "a-b", "a_b", "A", "unknown-x", "xunknown", "u-known", "b", "ab", "a--", "z_9"]


def test_client_names_are_matched_exactly_and_never_stand_in_a_regex() -> None:
    """A "." in a client name was a regex wildcard in client-routes.map and client-models.map:
    `u.known` handed its models to every unknown device. Names are plain now, looked up with
    map_str, and the regex maps are keyed by ids no user wrote. (The old maps keyed regexes
    by name: `^u.known@` matched `unknown@...`.)"""
    text = "".join(f'[[client]]\nname = "{n}"\ntag = "tag:t{i}"\nmodels = ["m{i}"]\npaths = ["/v1/models"]\n'
                   for i, n in enumerate(NAMES))
    parsed = clients.parse(text)
    files = {f.name: f for f in maps.client_maps(parsed, ALLOW, (), ollama=True)}
    ids = maps.client_ids(parsed)
    assert len(set(ids.values())) == len(ids) and all(re.fullmatch(r"c[0-9a-f]{12}", i) for i in ids.values())
    records = dict(files[maps.CLIENTS].entries)
    assert set(records) == {*NAMES, "unknown", "front"}
    for name in NAMES:
        assert records[name].startswith(ids[name] + "/pm/")
    for item in (files[maps.CLIENT_ROUTES], files[maps.CLIENT_MODELS]):
        for key, _ in item.entries:
            owner = key[1:].split("@", 1)[0]
            assert owner in ids.values() and not any(n in key for n in NAMES if len(n) > 1), key
    # Each regex matches only its own client's lookups.
    for name in NAMES:
        lookup = f"{ids[name]}@m{NAMES.index(name)}:latest"
        hits = [k for k, _ in files[maps.CLIENT_MODELS].entries if re.fullmatch(k[1:-1], lookup)]
        assert hits == [f"^{ids[name]}@m{NAMES.index(name)}:latest$"], name


@pytest.mark.parametrize("bad", ["u.known", "a b", "a;b", "a#b", "a\nb", "é", "a" * 65, "", "-a", "front", "unknown"])
def test_names_that_are_not_plain_are_refused_at_load(bad: str) -> None:
    from ai_server.base.errors import ConfigError
    with pytest.raises(ConfigError, match=r"client\[0\].name"):
        clients.parse(f'[[client]]\nname = {tomlfile.toml_string(bad)}\ndevice = "d"\n')


def test_records_say_who_is_not_known_yet() -> None:
    peer_based = clients.parse(TEXT)
    assert dict(maps.client_maps(peer_based, ALLOW, (), True, peers_known=False)[2].entries)["unknown"].split("/")[1] == "dwv"
    assert dict(maps.client_maps(peer_based, ALLOW, (), True)[2].entries)["unknown"].split("/")[1] == "dv"
    tokens_only = clients.parse('[[client]]\nname = "s"\ntoken_sha256 = "' + "0" * 64 + '"\n')
    flags = dict(maps.client_maps(tokens_only, ALLOW, (), True, peers_known=False)[2].entries)["unknown"].split("/")[1]
    assert "w" not in flags and "v" not in flags
