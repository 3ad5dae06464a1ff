"""clients.toml: who may use what, within allowlist.toml. No database: identities come from the
tailnet (`tailscale status --json`) or from a token whose SHA-256 alone is stored.

    [defaults]   models, rpm, concurrency, priority, quotas   what every client gets unless it says otherwise
    [unknown]    policy = "allow" | "deny"                 tailnet peers that match no [[client]]
    [[client]]   name; device | node_id | user | tag | token_sha256; paths, models, rpm, concurrency, priority, quotas; admin

Quotas (0: none): tokens_per_day, tokens_per_month (input + output tokens as the engine counts
them), gpu_seconds_per_day (time holding an engine slot), and max_seconds (how long one
generation may hold a slot before the proxy cuts it).

A peer address belongs to the most specific entry that matches it: a device (its MagicDNS
name, or its stable node ID), then a user, then a tag; between two entries of one rank, the
first in the file. A token wins over all of them, from any device. Only what the tailnet
vouches for identifies a peer (access/tailscale.py says what each field is worth): never the
HostName a device reports about itself. This module is pure: parsing, and the peer address ->
client name table.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

from ai_server.access.allowlist import check_rule_path
from ai_server.access.tailscale import Peer
from ai_server.base.errors import ConfigError
from ai_server.base.files import write_keeping_mode
from ai_server.base.netaddr import is_dns_name
from ai_server.base.tomlfile import Table, default_text, line_of, parse_toml, read_text

PRIORITIES = ("interactive", "normal", "batch")
KINDS = ("token_sha256", "device", "node_id", "user", "tag")
# Who a peer is, most specific first: one device (by name or stable ID), a user's devices, a tag's.
PEER_RANKS = (("device", "node_id"), ("user",), ("tag",))
UNKNOWN = "unknown"
# A front's own requests to its nodes (discovery, health checks): a node trusts the name only
# from its proxy.fronts, so a node whose [unknown] is "deny" can still be discovered.
FRONT = "front"
RESERVED = (UNKNOWN, FRONT)
# Names are data: plain names, matched exactly (map_str), never made into a pattern.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
TOKEN_PREFIX = "ais_"
TOKEN = re.compile(r"ais_[A-Za-z0-9_-]{43}")
# A model glob: model-name characters and * ? as wildcards (within one part of a name; ** across "/").
GLOB = re.compile(r"[A-Za-z0-9._:/*?-]{1,256}")
_NODE_ID = re.compile(r"[A-Za-z0-9]{1,64}")
_USER = re.compile(r"[^\s\x00-\x1f\x7f]{1,320}")
_TAG = re.compile(r"tag:[A-Za-z0-9-]{1,100}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Quotas and max_seconds stop here: a trillion tokens, 31 years; past that a value is a typo.
QUOTA_MAX = 10 ** 12


@dataclass(frozen=True)
class Policy:
    models: tuple[str, ...] = ("*",)
    rpm: int = 0               # requests per minute; 0: unlimited
    concurrency: int = 0       # requests in flight at once; 0: unlimited
    priority: str = "normal"
    paths: tuple[str, ...] | None = None   # None: every allowlist.toml path
    tokens_per_day: int = 0       # quotas: 0 = none
    tokens_per_month: int = 0
    gpu_seconds_per_day: int = 0
    max_seconds: int = 0          # one generation may hold an engine slot this long; 0: no limit

    @property
    def any_model(self) -> bool:
        return "*" in self.models


@dataclass(frozen=True)
class Client:
    name: str
    kind: str                  # token_sha256 | device | user | tag
    value: str
    policy: Policy
    line: int | None = None
    admin: bool = False        # may see the dashboard and /metrics from the network

    def identifies(self, peer: Peer) -> bool:
        if self.kind == "device":
            # A first label names a device of this tailnet; a full MagicDNS name, exactly that one
            # (a node shared in from another tailnet has no first label of ours).
            wanted = self.value.lower().rstrip(".")
            return wanted == (peer.dns_name if "." in wanted else peer.device) and wanted != ""
        if self.kind == "node_id":
            return peer.node_id != "" and peer.node_id == self.value
        if self.kind == "user":
            return peer.user != "" and peer.user.lower() == self.value.lower()
        if self.kind == "tag":
            return self.value in peer.tags
        return False


@dataclass(frozen=True)
class Clients:
    defaults: Policy = field(default_factory=Policy)
    unknown_allowed: bool = True
    clients: tuple[Client, ...] = ()

    @property
    def unknown(self) -> Policy:
        return self.defaults

    def named(self, name: str) -> Client | None:
        return next((c for c in self.clients if c.name == name), None)

    def policy_of(self, name: str) -> Policy:
        client = self.named(name)
        return client.policy if client is not None else self.defaults

    def owner(self, peer: Peer) -> str | None:
        """The client a tailnet peer is: a device, then a user, then a tag; the first of each rank."""
        for rank in PEER_RANKS:
            for client in self.clients:
                if client.kind in rank and client.identifies(peer):
                    return client.name
        return None

    @property
    def uses_peers(self) -> bool:
        """Some entry is known by what the tailnet says (not by a token): who is calling then
        depends on the peer map."""
        return any(c.kind != "token_sha256" for c in self.clients)

    def peer_table(self, peers: Iterable[Peer]) -> dict[str, str]:
        """Peer address -> client name, for every peer some [[client]] identifies."""
        table: dict[str, str] = {}
        for peer in peers:
            name = self.owner(peer)
            if name is not None:
                for address in peer.addresses:
                    table.setdefault(address, name)
        return table

    def peer_map(self, peers: Iterable[Peer], own: Iterable[str] = ()) -> dict[str, str]:
        """Every address the tailnet view knows -> its client, or "unknown" for a peer no
        [[client]] names and for this machine's own addresses. Tailscale carries packets only
        from nodes in this machine's map, so a caller at an address not in it is one the view
        does not show (a stale map, an emptied one): who calls is not known, never "unknown"."""
        peers = tuple(peers)
        table = self.peer_table(peers)
        for address in [a for p in peers for a in p.addresses] + list(own):
            table.setdefault(address, UNKNOWN)
        return table

    def tokens(self) -> dict[str, str]:
        return {c.value: c.name for c in self.clients if c.kind == "token_sha256"}


def normalize_model(name: str, ollama: bool) -> str | None:
    """A model name as the proxy compares it (the Lua does the same): lower case, Ollama's
    implicit ":latest" added; None when it is not a model name at all."""
    name = name.lower()
    if not name or len(name) > 256 or not re.fullmatch(r"[a-z0-9._:/-]+", name):
        return None
    if ollama and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def normalize_glob(glob: str, ollama: bool) -> str:
    """A glob as its models are named: lower case, and a plain name gets ":latest" like them."""
    glob = glob.lower()
    last = glob.rsplit("/", 1)[-1]
    if ollama and ":" not in last and "*" not in glob and "?" not in glob:
        glob += ":latest"
    return glob


def glob_regex(glob: str) -> str:
    """A model glob as a regex over lower-cased names, the same text for Python's re and for
    HAProxy's map_reg: `*` and `?` stay within one part of a name, `**` crosses "/". So
    "smollm2:*" is smollm2's tags, never "smollm2:11434/library/llama3:8b", which Ollama reads
    as llama3:8b from a registry at host smollm2, port 11434. Every other glob character is a
    literal in both but ".", written [.]."""
    out, i = [], 0
    glob = glob.lower()
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append({"*": "[^/]*", "?": "[^/]", ".": "[.]"}.get(glob[i], glob[i]))
        i += 1
    return "".join(out)


def model_allowed(policy: Policy, model: str, ollama: bool) -> bool:
    """The Python model of the proxy's model check."""
    if policy.any_model:
        return True
    name = normalize_model(model, ollama)
    return name is not None and any(re.fullmatch(glob_regex(normalize_glob(g, ollama)), name) for g in policy.models)


# -- parsing -------------------------------------------------------------------------------------


def _policy(t: Table, base: Policy, allow_paths: bool) -> Policy:
    def globs(value: list[Any]) -> str | None:
        for item in value:
            if not isinstance(item, str) or not GLOB.fullmatch(item):
                return f"{item!r} is not a model name or glob (letters, digits, . _ : / - and * ?)"
        return None

    def paths(value: list[Any]) -> str | None:
        for item in value:
            if not isinstance(item, str):
                return f"{item!r} is not a path"
            problem = check_rule_path(item)
            if problem:
                return f"{item!r} {problem}"
        return None

    def count(value: int) -> str | None:
        return None if value >= 0 else "must be 0 (unlimited) or more"

    def quota(value: int) -> str | None:
        return None if 0 <= value <= QUOTA_MAX else f"must be 0 (none) to {QUOTA_MAX}"

    return Policy(
        models=tuple(t.get("models", list(base.models), list, globs)),
        rpm=t.get("rpm", base.rpm, int, count),
        concurrency=t.get("concurrency", base.concurrency, int, count),
        priority=t.get("priority", base.priority, str,
                       lambda v: None if v in PRIORITIES else f"{v!r} is not one of {', '.join(PRIORITIES)}"),
        paths=tuple(t.get("paths", [], list, paths)) if allow_paths and "paths" in t.data else base.paths,
        tokens_per_day=t.get("tokens_per_day", base.tokens_per_day, int, quota),
        tokens_per_month=t.get("tokens_per_month", base.tokens_per_month, int, quota),
        gpu_seconds_per_day=t.get("gpu_seconds_per_day", base.gpu_seconds_per_day, int, quota),
        max_seconds=t.get("max_seconds", base.max_seconds, int, quota),
    )


def parse(text: str, label: str = "clients.toml") -> Clients:
    data = parse_toml(text, label)
    for name in data:
        if name not in ("defaults", "unknown", "client"):
            raise ConfigError(label, "unknown table; clients.toml has [defaults], [unknown] and [[client]]",
                              line=line_of(text, name) or line_of(text, None, name), key=name)
    for name in ("defaults", "unknown"):
        if name in data and not isinstance(data[name], dict):
            raise ConfigError(label, "must be a table", line=line_of(text, None, name), key=name)
    d = Table(data.get("defaults", {}), "defaults", text, label)
    defaults = _policy(d, Policy(), allow_paths=False)
    d.finish()
    u = Table(data.get("unknown", {}), "unknown", text, label)
    unknown = u.get("policy", "allow", str, lambda v: None if v in ("allow", "deny") else 'must be "allow" or "deny"')
    u.finish()
    entries = data.get("client", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(label, "must be [[client]] tables", line=line_of(text, "client") or line_of(text, None, "client"),
                          key="client")
    clients: list[Client] = []
    for index, entry in enumerate(entries):
        t = Table(entry, "client", text, label, index)
        here = line_of(text, "client", None, index)
        fail = t.fail

        name = t.get("name", None, str, lambda v: None if NAME.fullmatch(v) and v not in RESERVED else
                     "must be 1-64 letters, digits, - and _, starting with a letter or digit "
                     '(and not "unknown" or "front")')
        if name is None:
            raise fail("name", "missing: every client has a name (shown in logs, status, metrics)")
        if any(c.name == name for c in clients):
            raise fail("name", f"{name!r} is already a client (line {next(c.line for c in clients if c.name == name)})")
        kinds = [k for k in KINDS if k in entry]
        if len(kinds) != 1:
            raise fail(kinds[1] if len(kinds) > 1 else "name",
                       "needs exactly one of device, node_id, user, tag or token_sha256")
        kind = kinds[0]
        check = {"token_sha256": lambda v: None if _SHA256.fullmatch(v) else "must be 64 lower-case hex digits "
                                                                                "(`ai-server clients token NAME` writes it)",
                 "device": lambda v: None if is_dns_name(v) else
                 "must be the device's MagicDNS name or its first label (e.g. alices-macbook), not the "
                 "name it reports about itself (its HostName)",
                 "node_id": lambda v: None if _NODE_ID.fullmatch(v) else
                 'must be a stable node ID, as `tailscale status --json` shows it ("ID": "n...CNTRL")',
                 "user": lambda v: None if _USER.fullmatch(v) else "must be a login name, e.g. alice@example.com",
                 "tag": lambda v: None if _TAG.fullmatch(v) else 'must look like "tag:ci"'}[kind]
        value = t.get(kind, "", str, check)
        policy = _policy(t, defaults, allow_paths=True)
        admin = t.get("admin", False, bool)
        t.finish()
        clients.append(Client(name, kind, value, policy, here, admin))
    return Clients(defaults, unknown == "allow", tuple(clients))


def read(config_dir: Path) -> Clients:
    text, label = read_text(config_dir / "clients.toml")
    return parse(text, label)


# -- tokens --------------------------------------------------------------------------------------


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def mint(path: Path, name: str) -> str:
    """A new token for client `name`: its hash written into clients.toml (comments kept), the
    token returned, to be shown once. A token client gets a new token; a client identified
    otherwise is refused (a token is an identity of its own)."""
    if not NAME.fullmatch(name) or name in RESERVED:
        raise ConfigError(str(path), f"{name!r} is not a client name (1-64 letters, digits, - and _)", key="name")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = default_text("clients.toml")
    parse(text, str(path))  # refuse to edit a file that is already broken
    document = tomlkit.parse(text)
    token = new_token()
    entries = document.get("client")
    if entries is None:
        entries = tomlkit.aot()
        document["client"] = entries
    for entry in entries:
        if entry.get("name") == name:
            if "token_sha256" not in entry:
                kind = next(k for k in KINDS if k in entry)
                raise ConfigError(str(path), f"client {name!r} is identified by {kind}; a token is an identity of "
                                  f"its own: give it another name, e.g. `ai-server clients token {name}-token`",
                                  key="name")
            entry["token_sha256"] = token_hash(token)
            break
    else:
        entry = tomlkit.table()
        entry["name"] = name
        entry["token_sha256"] = token_hash(token)
        entries.append(entry)
    new_text = tomlkit.dumps(document)
    parse(new_text, str(path))
    write_keeping_mode(path, new_text, 0o600)
    return token
