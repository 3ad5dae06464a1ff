"""The proxy's whole request policy as one pure function: `decide(request, tailnet, clients,
allowlist)` says what HAProxy answers before the engine, as allowlist.decide does for the
allowlist alone. haproxy/request.py renders the same steps, in the same order, as haproxy.cfg
rules; tests/integration/test_policy_model.py holds the running proxy to this function over
generated clients.toml files, tailnets and requests.

The order is the point: everything that needs no body (the request line and headers, who is
calling, the allowlist, the client's paths, its rate and concurrency, the memory bodies may
take) is decided before a byte of the body is buffered; then the body, received whole within
proxy.request_timeout; then the model it names, refused unless the check saw all of it.

Answers are (status, reason); status 0 forwards. The reasons are the `reason` of the proxy's
JSON answers (haproxy/answers.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ai_server.access import allowlist as allowlist_mod
from ai_server.access import modelscan
from ai_server.access.allowlist import MODEL_PLACEHOLDER, Allowlist
from ai_server.access.clients import FRONT, NAME, UNKNOWN, Clients, Policy, model_allowed
from ai_server.access.tailnet import Detection, is_tailnet

MAX_TARGET = 8 * 1024
MAX_HEADERS = 64 * 1024
# Bodies up to this size count in a class of their own (b0), outside proxy.body_memory_mb,
# SMALL_BODIES of them at once; larger ones count against proxy.body_memory_mb.
SMALL_BODY = 64 * 1024
# Uncounted, 2,000 small bodies judged at once beside full body classes took the model
# check's Lua copies past tune.lua.maxmem and the HAProxy worker down (attacker's finding A on
# issue 16). 1024 at once is 64 MiB, which tune.lua.maxmem has room for (haproxy/lua.py).
SMALL_BODIES = 1024
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LOCALHOST = re.compile(r"(localhost|localhost\.)(:[0-9]+)?")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] ais_[A-Za-z0-9_-]{43}")
_KEY = re.compile(r"ais_[A-Za-z0-9_-]{43}")
_LENGTH = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class Request:
    method: str
    target: str                              # as sent: path and query
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    source: str = "100.64.0.2"               # the address the connection comes from
    listener: str = "100.64.0.1"             # the address it arrived at

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass(frozen=True)
class Limits:
    """What the proxy is set to, beside the files: ai-server.toml's [proxy] and the engine."""
    max_body: int = 32 * 1024 * 1024
    body_memory: int = 512 * 1024 * 1024
    hosts: frozenset[str] = frozenset()      # Host values that name this server (maps.host_forms)
    fronts: frozenset[str] = frozenset()     # proxy.fronts
    ollama: bool = True                      # names compare as Ollama's (":latest")


@dataclass(frozen=True)
class Counts:
    """What HAProxy's stick tables hold before this request: by tracking key, requests admitted
    in the last minute (a refused one does not count) and requests in flight; by body class,
    bodies in flight."""
    last_minute: Mapping[str, int] = field(default_factory=dict)
    in_flight: Mapping[str, int] = field(default_factory=dict)
    bodies: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    status: int
    reason: str = ""
    client: str = UNKNOWN
    track: str | None = None                 # the stick-table key whose rpm it counts toward: admitted ones only
    model: str | None = None


def body_classes(max_body: int, budget: int) -> list[tuple[str, int, int]]:
    """(class, upper size, at most at once), smallest first: b0, bodies up to SMALL_BODY,
    SMALL_BODIES at once; then size classes up to 1, 4, 16, 64 MiB ... (the last one
    max_body), each allowed an equal share of `budget`, so that together they never hold more
    than it. A body is in HAProxy twice while it is judged (its buffer, and the model check's
    copy in Lua), so each counts twice: counted once, 20 connections of 32 MiB bodies took
    HAProxy to 936 MiB against a budget of 512."""
    uppers, upper = [], 1 << 20
    while upper < max_body:
        uppers.append(upper)
        upper <<= 2
    uppers.append(max_body)
    share = budget // len(uppers)
    large = [(f"b{i}", u, max(1, share // (2 * u))) for i, u in enumerate(uppers, start=1)]
    return [("b0", SMALL_BODY, SMALL_BODIES)] + large


def body_class(length: int, classes: list[tuple[str, int, int]]) -> tuple[str, int] | None:
    if length <= 0:
        return None
    return next(((name, limit) for name, upper, limit in classes if length <= upper), None)


def header_block_length(request: Request) -> int:
    """req.hdrs,length: every header as `name: value` CRLF, and the blank line."""
    return sum(len(k) + len(v) + 4 for k, v in request.headers) + 2


def _host_ok(request: Request, limits: Limits, from_front: bool) -> bool:
    host = (request.header("host") or [""])[-1].lower()
    loopback = request.listener.startswith("127.") or request.listener == "::1"
    return host in limits.hosts or (bool(_LOCALHOST.fullmatch(host)) and loopback) or from_front


def _framing(request: Request, limits: Limits) -> tuple[int, str] | None:
    """The request line, headers and body framing, judged without the body."""
    if not request.target.startswith("/"):
        return 400, "target"
    if any(_CONTROL.search(f"{k}: {v}") for k, v in request.headers):
        return 400, "header"
    if len(request.target) > MAX_TARGET:
        return 414, "target_too_long"
    if header_block_length(request) > MAX_HEADERS:
        return 431, "headers_too_large"
    return None


def _length(request: Request, limits: Limits) -> tuple[int, str] | None:
    declared = request.header("content-length")
    if declared and (not _LENGTH.fullmatch(declared[-1]) or int(declared[-1]) > limits.max_body):
        return 413, "body_too_large"
    if request.header("transfer-encoding"):
        return 411, "chunked"
    return None


def identify(request: Request, tailnet: Detection, clients: Clients, limits: Limits) -> tuple[str, tuple[int, str] | None]:
    """Who is calling, or the refusal that says it cannot be told: a front's word (only from
    proxy.fronts, on a tailnet listener), a token, the tailnet peer, else unknown."""
    on_tailnet = is_tailnet(request.listener)
    from_front = request.source in limits.fronts and on_tailnet
    claimed = request.header("x-ai-server-client")
    if claimed and not from_front:
        return UNKNOWN, (403, "front")
    client = claimed[-1] if claimed and NAME.fullmatch(claimed[-1]) else None
    authorization, api_key = request.header("authorization"), request.header("x-api-key")
    if len(authorization) > 1 or len(api_key) > 1:
        return UNKNOWN, (400, "token")
    bearer = authorization[0][7:] if authorization and _BEARER.fullmatch(authorization[0]) else None
    key = api_key[0] if api_key and _KEY.fullmatch(api_key[0]) else None
    token = bearer or key
    if token and client is None:
        client = clients.tokens().get(hashlib.sha256(token.encode()).hexdigest())
    attempt = any("ais_" in v for v in authorization + api_key)
    if attempt and client is None:
        return UNKNOWN, (401, "token")
    if key is not None and key != token:
        return UNKNOWN, (401, "token")
    unseen = False
    if client is None and on_tailnet:
        client = clients.peer_map(tailnet.peers, tailnet.addresses).get(request.source)
        unseen = client is None
    if client not in {c.name for c in clients.clients} | {FRONT}:
        client = UNKNOWN
    # No peer map yet, or a caller the map does not show (it may be one an entry names).
    blind = client == UNKNOWN and on_tailnet and not tailnet.peers_known
    if clients.uses_peers and (blind or unseen):
        return UNKNOWN, (503, "identity")
    if client == UNKNOWN and not clients.unknown_allowed:
        return UNKNOWN, (403, "unknown")
    return client, None


def policy_of(clients: Clients, client: str) -> Policy:
    return Policy() if client == FRONT else clients.policy_of(client)


def _paths_ok(request: Request, policy: Policy, allow: Allowlist) -> bool:
    if policy.paths is None:
        return True
    return any(rule.path in policy.paths and request.method in rule.methods and allowlist_mod.matches(rule, request.path)
               for rule in allow.rules)


def _model(request: Request, allow: Allowlist, limits: Limits) -> tuple[str, str | None] | None:
    """The model check's verdict, when it runs: on a body, or a {model} path."""
    rules = [tuple(r.path.split(MODEL_PLACEHOLDER)) for r in allow.rules if MODEL_PLACEHOLDER in r.path]
    has_body = bool(request.body)
    path_rule = any(allowlist_mod.matches(r, request.path) for r in allow.rules if MODEL_PLACEHOLDER in r.path)
    if not has_body and not path_rule:
        return None
    return modelscan.judge(request.path, request.body, [(p, s) for p, s in rules], limits.ollama)


def evaluate(request: Request, tailnet: Detection, clients: Clients, allow: Allowlist,
             limits: Limits = Limits(), counts: Counts = Counts()) -> Outcome:
    """decide(), with what it found on the way (who, the tracking key, the model). Only an
    admitted request counts toward its client's rpm (haproxy/request.py), so only its Outcome
    has a tracking key."""
    outcome = _evaluate(request, tailnet, clients, allow, limits, counts)
    return replace(outcome, track=None) if outcome.status else outcome


def _evaluate(request: Request, tailnet: Detection, clients: Clients, allow: Allowlist,
              limits: Limits, counts: Counts) -> Outcome:
    early = _framing(request, limits)
    if early:
        return Outcome(*early)
    from_front = request.source in limits.fronts and is_tailnet(request.listener)
    if not _host_ok(request, limits, from_front):
        return Outcome(421, "host")
    early = _length(request, limits)
    if early:
        return Outcome(*early)
    client, refused = identify(request, tailnet, clients, limits)
    if refused:
        return Outcome(*refused, client=client)
    if allowlist_mod.is_management(request.path):
        return Outcome(403, "management", client)
    verdict = allowlist_mod.decide(allow, request.method, request.target)
    if verdict:
        return Outcome(verdict, "allowlist" if verdict == 403 else "method", client)
    policy = policy_of(clients, client)
    if not _paths_ok(request, policy, allow):
        return Outcome(403, "path", client)
    track = client if client != UNKNOWN else f"{UNKNOWN}@{request.source}"
    if policy.rpm and counts.last_minute.get(track, 0) + 1 > policy.rpm:
        return Outcome(429, "rpm", client, track)
    if policy.concurrency and counts.in_flight.get(track, 0) + 1 > policy.concurrency:
        return Outcome(429, "concurrency", client, track)
    declared = int((request.header("content-length") or ["0"])[-1])
    klass = body_class(declared, body_classes(limits.max_body, limits.body_memory))
    if klass and counts.bodies.get(klass[0], 0) + 1 > klass[1]:
        return Outcome(503, "bodies", client, track)
    return _judged(request, allow, limits, policy, client, track)


def _judged(request: Request, allow: Allowlist, limits: Limits, policy: Policy, client: str, track: str) -> Outcome:
    """The body's part: the model it names, against the client's models."""
    scanned = _model(request, allow, limits)
    if scanned is None:
        return Outcome(0, "", client, track)
    verdict, detail = scanned
    if verdict == modelscan.TWO:
        return Outcome(400, "model", client, track)
    model = detail if verdict == modelscan.OK else None
    if not policy.any_model:
        if model is not None and not model_allowed(policy, model, limits.ollama):
            return Outcome(403, "model", client, track, model)
        if model is None and request.body:
            return Outcome(403, "model", client, track)
    return Outcome(0, "", client, track, model)


def decide(request: Request, tailnet: Detection, clients: Clients, allow: Allowlist,
           limits: Limits = Limits(), counts: Counts = Counts()) -> tuple[int, str]:
    """What the proxy answers `request` before the engine: (0, "") to forward it, else
    (status, reason)."""
    outcome = evaluate(request, tailnet, clients, allow, limits, counts)
    return outcome.status, outcome.reason
