"""clients.toml: parsing, precedence, tokens, model names (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_server.access import clients
from ai_server.access.tailscale import Peer, parse
from ai_server.base import tomlfile
from ai_server.base.errors import ConfigError

SUFFIX = "tail1234.ts.net"
MAC = Peer(("100.64.0.2",), "Alice's MacBook", "alices-macbook.tail1234.ts.net", "alice@example.com", (), "nMAC1CNTRL", SUFFIX)
CI = Peer(("100.64.0.3", "fd7a:115c:a1e0::3"), "ci-box", "ci-box.tail1234.ts.net", "bot@example.com", ("tag:ci",),
          "nCI1CNTRL", SUFFIX)
PHONE = Peer(("100.64.0.4",), "iPhone", "alices-iphone.tail1234.ts.net", "alice@example.com", (), "nPH1CNTRL", SUFFIX)


def test_the_shipped_default_restricts_nothing() -> None:
    shipped = clients.parse(tomlfile.default_text("clients.toml"))
    assert shipped == clients.Clients()
    assert shipped.unknown_allowed and shipped.defaults.any_model and shipped.defaults.rpm == 0


def test_precedence_device_then_user_then_tag_first_of_each_kind() -> None:
    text = """
[[client]]
name = "ci"
tag = "tag:ci"
[[client]]
name = "alice"
user = "alice@example.com"
[[client]]
name = "laptop"
device = "alices-macbook"
[[client]]
name = "laptop-again"
node_id = "nMAC1CNTRL"
"""
    parsed = clients.parse(text)
    assert parsed.owner(MAC) == "laptop"       # device beats user; the first device entry wins
    assert parsed.owner(PHONE) == "alice"
    assert parsed.owner(CI) == "ci"
    assert parsed.peer_table([MAC, CI, PHONE]) == {"100.64.0.2": "laptop", "100.64.0.3": "ci",
                                                   "fd7a:115c:a1e0::3": "ci", "100.64.0.4": "alice"}


@pytest.mark.parametrize("text, where", [
    ('[[client]]\nname = "a"\n', "client[0].name: needs exactly one"),
    ('[[client]]\nname = "a"\ndevice = "d"\nuser = "u@x"\n', "client[0].user: needs exactly one"),
    ('[[client]]\nname = "unknown"\ndevice = "d"\n', "client[0].name"),
    ('[[client]]\nname = "a b"\ndevice = "d"\n', "client[0].name"),
    # Names are plain names: a "." would be a regex wildcard to anything that made one a pattern.
    ('[[client]]\nname = "u.known"\ndevice = "d"\n', "client[0].name"),
    ('[[client]]\nname = "a:b"\ndevice = "d"\n', "client[0].name"),
    ('[[client]]\nname = "-a"\ndevice = "d"\n', "client[0].name"),
    ('[[client]]\nname = "front"\ndevice = "d"\n', "client[0].name"),
    ('[[client]]\nname = "a\\n"\ndevice = "d"\n', "client[0].name"),
    # A device is its MagicDNS name (or first label), never what it calls itself.
    ('[[client]]\nname = "a"\ndevice = "Alice\'s MacBook"\n', "client[0].device: must be the device's MagicDNS name"),
    ('[[client]]\nname = "a"\ndevice = "x\\u0000"\n', "client[0].device"),
    ('[[client]]\nname = "a"\nnode_id = "n-1"\n', "client[0].node_id"),
    ('[[client]]\nname = "a"\ndevice = "d"\n[[client]]\nname = "a"\ntag = "tag:x"\n', "client[1].name: 'a' is already"),
    ('[[client]]\nname = "a"\ntoken_sha256 = "xyz"\n', "client[0].token_sha256"),
    ('[[client]]\nname = "a"\ntag = "ci"\n', "client[0].tag"),
    ('[[client]]\nname = "a"\ndevice = "d"\nmodels = ["qwen 7b"]\n', "client[0].models"),
    ('[[client]]\nname = "a"\ndevice = "d"\npaths = ["/api/pull"]\n', "client[0].paths"),
    ('[[client]]\nname = "a"\ndevice = "d"\npaths = ["/v1/chat\\n"]\n', "client[0].paths"),
    ('[[client]]\nname = "a"\ndevice = "d"\npriority = "urgent"\n', "client[0].priority"),
    ('[[client]]\nname = "a"\ndevice = "d"\nrpm = -1\n', "client[0].rpm"),
    ('[defaults]\npaths = ["/v1/models"]\n', "defaults.paths: unknown key"),
    ('[unknown]\npolicy = "maybe"\n', "unknown.policy"),
    ('[client]\nname = "a"\n', "client: must be [[client]]"),
])
def test_bad_entries_name_file_line_and_key(text: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where.replace("[", "\\[").replace("]", "\\]")) as info:
        clients.parse(text, "clients.toml")
    assert info.value.line is not None


def test_tokens_are_minted_once_and_stored_hashed(tmp_path: Path) -> None:
    target = tmp_path / "clients.toml"
    target.write_text(tomlfile.default_text("clients.toml"))
    token = clients.mint(target, "script")
    assert clients.TOKEN.fullmatch(token)
    text = target.read_text()
    assert token not in text and clients.token_hash(token) in text
    assert "# One entry per client." in text  # comments kept
    parsed = clients.parse(text)
    assert parsed.tokens() == {clients.token_hash(token): "script"}
    again = clients.mint(target, "script")
    assert clients.parse(target.read_text()).tokens() == {clients.token_hash(again): "script"}
    target.write_text(text + '\n[[client]]\nname = "laptop"\ndevice = "d"\n')
    before = target.read_text()
    with pytest.raises(ConfigError, match="identified by device"):
        clients.mint(target, "laptop")
    assert target.read_text() == before


@pytest.mark.parametrize("model, ollama, expected", [
    ("Qwen2.5-Coder:7B", True, "qwen2.5-coder:7b"), ("llama3", True, "llama3:latest"), ("llama3", False, "llama3"),
    ("hf.co/org/repo", True, "hf.co/org/repo:latest"), ("registry:5000/ns/m", True, "registry:5000/ns/m:latest"),
    ("bad name", True, None), ("", True, None), ("a" * 257, False, None)])
def test_model_names_are_compared_as_the_engine_names_them(model: str, ollama: bool, expected: str | None) -> None:
    assert clients.normalize_model(model, ollama) == expected


def test_model_globs() -> None:
    policy = clients.Policy(models=("qwen2.5-coder:*", "llama3"))
    assert clients.model_allowed(policy, "qwen2.5-coder:32b", True)
    assert clients.model_allowed(policy, "QWEN2.5-CODER:7b", True)
    assert clients.model_allowed(policy, "llama3", True) and clients.model_allowed(policy, "llama3:latest", True)
    assert not clients.model_allowed(policy, "llama3:70b", True)
    assert not clients.model_allowed(policy, "qwen2.5:7b", True)
    assert clients.model_allowed(clients.Policy(), "anything at all", True)


def test_a_glob_stays_within_one_part_of_a_name() -> None:
    """`smollm2:*` matched "smollm2:11434/library/llama3:8b" (fnmatch's * crosses "/"), which
    Ollama reads as llama3:8b from a registry at host smollm2: a glob for one model's tags gave
    any model of any registry. The proxy's regex is the same text (maps.py)."""
    tags = clients.Policy(models=("smollm2:*",))
    assert clients.model_allowed(tags, "smollm2:135m", True)
    assert not clients.model_allowed(tags, "smollm2:11434/library/llama3:8b", True)
    assert not clients.model_allowed(clients.Policy(models=("hf.co/*",)), "hf.co/org/repo:q4", True)
    assert clients.model_allowed(clients.Policy(models=("hf.co/**",)), "hf.co/org/repo:q4", True)
    assert not clients.model_allowed(clients.Policy(models=("smollm2:13?m",)), "smollm2:13/m", True)
    assert clients.glob_regex("a.b:*") == "a[.]b:[^/]*" and clients.glob_regex("hf.co/**") == "hf[.]co/.*"


def test_tailscale_status_shapes() -> None:
    status = parse("""{"BackendState": "Running", "TailscaleIPs": ["100.64.0.1", "fd7a:115c:a1e0::1"],
      "Self": {"DNSName": "MyMac.tail1234.ts.net.", "HostName": "My Mac", "TailscaleIPs": ["100.64.0.1"]},
      "CertDomains": ["mymac.tail1234.ts.net"],
      "Peer": {"nodekey:1": {"HostName": "x", "DNSName": "bad name.ts.net.", "UserID": 7,
                             "TailscaleIPs": ["100.64.0.9", "nonsense"],
                             "Tags": ["tag:ci"]}},
      "User": {"7": {"ID": 7, "LoginName": "bob@example.com"}}}""")
    assert status.running and status.addresses == ("100.64.0.1", "fd7a:115c:a1e0::1")
    assert status.names == ("mymac.tail1234.ts.net", "mymac") and status.cert_domains == ("mymac.tail1234.ts.net",)
    (only,) = status.peers
    assert only.addresses == ("100.64.0.9",) and only.dns_name == "" and only.user == "bob@example.com"
    assert only.tags == ("tag:ci",)


def test_a_device_is_what_the_tailnet_vouches_for_not_its_hostname() -> None:
    """`device` matched the HostName a device reports about itself: renaming a laptop to
    another's name took that one's policy. Only the MagicDNS name counts now (unique in the
    tailnet), its first label only in this tailnet, or the stable node ID. (Fails on the old
    Client.identifies, which compared HostNames.)"""
    parsed = clients.parse('[[client]]\nname = "laptop"\ndevice = "alices-macbook"\n'
                           '[[client]]\nname = "box"\nnode_id = "nCI1CNTRL"\n'
                           '[[client]]\nname = "full"\ndevice = "alices-iphone.tail1234.ts.net"\n')
    impostor = Peer(("100.64.0.9",), "alices-macbook", "bobs-pc.tail1234.ts.net", "bob@example.com", (), "nBOB", SUFFIX)
    shared_in = Peer(("100.64.0.10",), "x", "alices-macbook.tail9999.ts.net", "eve@other.example", (), "nEVE", SUFFIX)
    assert parsed.owner(MAC) == "laptop"
    assert parsed.owner(impostor) is None          # its HostName is the laptop's name: nothing
    assert parsed.owner(shared_in) is None         # another tailnet's alices-macbook: nothing
    assert parsed.owner(CI) == "box" and parsed.owner(PHONE) == "full"
    assert parsed.owner(Peer(("100.64.0.11",), "x", "ci-box.tail1234.ts.net", "", (), "nci1cntrl", SUFFIX)) is None
    assert shared_in.device == "" and MAC.device == "alices-macbook"


def test_tailscale_status_peers_carry_their_stable_id_and_this_tailnets_suffix() -> None:
    status = parse("""{"BackendState": "Running", "MagicDNSSuffix": "tail1234.ts.net",
      "Self": {"DNSName": "mymac.tail1234.ts.net.", "TailscaleIPs": ["100.64.0.1"]},
      "Peer": {"k1": {"ID": "nABC1CNTRL", "HostName": "mymac", "DNSName": "laptop.tail1234.ts.net.", "UserID": 1,
                      "TailscaleIPs": ["100.64.0.2"]},
               "k2": {"ID": "n-bad id", "HostName": "x", "DNSName": "laptop.tail9999.ts.net.", "UserID": 1,
                      "TailscaleIPs": ["100.64.0.3"]}}}""")
    one, two = status.peers
    assert (one.node_id, one.device, one.suffix) == ("nABC1CNTRL", "laptop", "tail1234.ts.net")
    assert (two.node_id, two.device, two.dns_name) == ("", "", "laptop.tail9999.ts.net")


@pytest.mark.parametrize("text", ["[1]", '{"Peer": [1]}', '{"User": [1], "Peer": {}}', '{"Self": "x"}', "null"])
def test_tailscale_status_garbage_is_refused_or_read_as_nothing(text: str) -> None:
    """What a broken CLI prints never becomes a peer: either ValueError (the caller keeps its
    last view) or a status with no peers."""
    try:
        status = parse(text)
    except (ValueError, TypeError, AttributeError):
        return
    assert status.peers == () and not status.running
