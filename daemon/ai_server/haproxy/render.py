"""haproxy.cfg, rendered from config (pure). Meant to be read: every block says why it is there.

It sticks to syntax HAProxy 2.6 (Debian 12) and 3.x (Homebrew) both accept. The text in it is
ours: addresses are parsed IPs written back by ipaddress, numbers are numbers, every file and
socket is named relative to the state dir, where HAProxy runs (so a folder name with '$' or
quotes in it never meets HAProxy's config parser), and rules and names live in the map files
(maps.py). The one kind of configuration text it holds is a front's node names, validated as
[A-Za-z0-9][A-Za-z0-9._-]{0,31} (config.py). tests/unit/test_render_user_text.py holds it to this.
"""

from __future__ import annotations

from dataclasses import dataclass

from ai_server.access.allowlist import METHODS
from ai_server.base.netaddr import parse_ip
from ai_server.config import LOCAL_NODE, Config
from ai_server.haproxy import maps, names
from ai_server.haproxy.logfmt import LOG_FORMAT
from ai_server.haproxy.lua import LUA

# Where the supervisor finds them too (paths.Paths): relative here, HAProxy runs in the state dir.
STATS_SOCKET = "haproxy.sock"
LOG_SOCKET = "haproxy-log.sock"
TLS_PEM = "tls.pem"
GATE_SOCKET = "gate.sock"
LOCAL_SOCKET = "local.sock"
# A front's health check of its own engine, answered by its `local` frontend (never reachable
# from outside: that frontend listens on a unix socket only).
LOCAL_HEALTH_PATH = "/ai-server/local-health"
CLIENT_NAME = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# Requests that make the engine generate (or embed): they wait for one of its slots. Everything
# else (model lists, versions, details) is cheap and never waits behind them.
GENERATION_PATHS = ("/v1/chat/completions /v1/completions /v1/messages /v1/responses /v1/embeddings "
                    "/api/chat /api/generate /api/embed /api/embeddings")
PRIORITY_CLASSES = ("interactive", "normal", "batch")
# Generations in progress: client|model|start (ms since the epoch)|address|port.
LIVE_TABLE = "live"
# Retry-After when the queue is full or a request waited its whole proxy.queue_timeout: a few
# seconds, long enough for a slot to turn over, short enough for an interactive client.
RETRY_AFTER_S = 5
# On /v1/models answers: how many generations this node runs at once (a front's maxconn for it).
SLOTS_HEADER = "X-Ai-Server-Slots"
# Room above the largest body for the request line and headers (HAProxy keeps both in one buffer).
HEADROOM = 64 * 1024
MAX_URL = 8 * 1024
MAX_HEADERS = 64 * 1024
# Requests that could change the model store: refused here whatever the maps say.
MANAGEMENT_PATHS = "/api/pull /api/push /api/create /api/copy /api/delete"
MANAGEMENT_PREFIX = "/api/blobs/"
TAILNET_RANGES = "100.64.0.0/10 fd7a:115c:a1e0::/48"
TOKEN_PATTERN = "ais_[A-Za-z0-9_-]{43}"
# Headers the engine might trust or act on, which only the proxy may set: the client's own
# are dropped. Upgrade (and Connection, which can name it) would switch the connection to
# another protocol past every check.
DROPPED_HEADERS = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X-Forwarded-For",
                   "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port", "Forwarded", "X-Real-IP",
                   "X-Client-IP", "True-Client-IP", "Upgrade", "Connection", "HTTP2-Settings",
                   "X-Ai-Server-Class", "X-Ai-Server-Client")


@dataclass(frozen=True)
class RenderInput:
    config: Config
    addresses: tuple[str, ...]
    engine_health_path: str = "/"
    # HAProxy built with Lua (Debian's and Homebrew's are): requests can be held while the
    # engine restarts. Without it they get 503 for the few seconds that takes.
    lua: bool = True
    # Appended to map file names: ".new" in the trial config `haproxy -c` checks before a swap.
    map_suffix: str = ""
    # HTTPS with tls.pem (the MagicDNS certificate, proxy.tls = "tailscale").
    tls: bool = False
    # Fronting [[node]]s: each model backend's servers, as the supervisor last set them
    # ("ready", "drain"), so a reload starts where the running proxy was; and each
    # node's slots.
    node_states: tuple[tuple[tuple[str, str], str], ...] = ()
    node_slots: tuple[tuple[str, int], ...] = ()


def bind_address(address: str, port: int) -> str:
    ip = parse_ip(address)
    return f"ipv{ip.version}@{ip}:{port}"


def ms(seconds: float) -> str:
    return f"{int(round(seconds * 1000))}ms"


def _json(status: int, message: str) -> str:
    # Our own fixed messages only; nothing a client sent is echoed. (No ' in them: it would end
    # HAProxy's quoted string.)
    return f"content-type application/json string '{{\"error\":\"{message}\",\"status\":{status}}}'"


def _refusal(status: int, reason: str, message: str) -> str:
    """A JSON refusal naming the client (validated names only: [A-Za-z0-9._-])."""
    return (f"content-type application/json lf-string '{{\"error\":\"{message}\",\"client\":\"%[var(txn.client)]\","
            f"\"reason\":\"{reason}\",\"status\":{status}}}'")


def render(spec: RenderInput) -> str:
    parts = [*_global(spec), "", *_defaults(spec), "", *_frontend(spec), ""]
    if spec.config.fronting:
        parts += [*_node_backends(spec), ""]
        if spec.config.engine.kind != "none":
            parts += [*_local_frontend(spec), ""]
    if spec.config.engine.kind != "none":
        parts += [*_engine_backends(spec), ""]
    parts += _tables()
    return "\n".join(parts)


def _global(spec: RenderInput) -> list[str]:
    proxy = spec.config.proxy
    lines = [
        "# Generated by ai-server from ai-server.toml and allowlist.toml. Do not edit: it is",
        "# rewritten, checked with `haproxy -c` and reloaded on every change to those files.",
        "",
        "global",
        "    # Files (maps, Lua) are named relative to this file; sockets relative to the state dir,",
        "    # where HAProxy runs.",
        "    default-path config",
        "    # Access log and HAProxy's own notices go to the supervisor as datagrams. A datagram",
        "    # socket never blocks the sender: if the supervisor falls behind, lines are dropped,",
        "    # requests are not held up.",
        f"    log unix@{LOG_SOCKET} len 8192 format raw local0 info",
        "    # Runtime API: maps swapped live, the engine drained before a restart, listening",
        "    # sockets handed to new workers on reload so no connection is refused.",
        f"    stats socket unix@{STATS_SOCKET} mode 600 level admin expose-fd listeners",
        "    # After a reload, old workers finish the responses they are streaming (a long",
        "    # generation included) for at most this long. Stopping is bounded separately, by",
        "    # proxy.drain_timeout, after which the supervisor kills what is left.",
        f"    hard-stop-after {ms(proxy.idle_timeout)}",
        "    # A whole request body (up to proxy.max_body_mb) fits in one buffer: it is received",
        "    # completely before it is judged or forwarded, so a client that stalls mid-body never",
        "    # reaches the engine. Memory is only used as bodies arrive.",
        f"    tune.bufsize {proxy.max_body_bytes + HEADROOM}",
    ]
    if spec.lua:
        lines += ["    # Holding requests while the engine restarts, and reading the model a request names.",
                  "    # One Lua state per thread: a long body read on one thread never waits for another's.",
                  f"    lua-load-per-thread {LUA}{spec.map_suffix}"]
    return lines


def _defaults(spec: RenderInput) -> list[str]:
    proxy = spec.config.proxy
    return [
        "defaults",
        "    mode http",
        "    log global",
        "    option dontlognull",
        "    # Tokens are streamed in small chunks: send each at once. Without this HAProxy may",
        "    # hold a chunk back (MSG_MORE) waiting for more, up to 200 ms, bunching the stream.",
        "    option http-no-delay",
        "    # X-Forwarded-For carries the client's tailnet address to the engine.",
        "    option forwardfor",
        "    timeout connect 5s",
        "    # A client has this long to send its request, body included.",
        f"    timeout http-request {ms(proxy.request_timeout)}",
        "    timeout http-keep-alive 60s",
        "    # Inactivity, both ways: loading a 70B model can take minutes before the first byte,",
        "    # and a long generation may pause between tokens.",
        f"    timeout client {ms(proxy.idle_timeout)}",
        f"    timeout server {ms(proxy.idle_timeout)}",
        "    # While the engine restarts, requests wait in the queue instead of failing.",
        f"    timeout queue {ms(proxy.queue_timeout)}",
    ]


def _frontend(spec: RenderInput) -> list[str]:
    proxy = spec.config.proxy
    m = spec.map_suffix
    lines = [
        "frontend ai_server",
        "    # HTTP/1.1 only: an HTTP/2 client (prior knowledge) would bring requests without",
        "    # Content-Length past the body rules below. Every SDK speaks HTTP/1.1.",
    ]
    tls = ""
    if spec.tls:
        lines.append("    # HTTPS with this machine's MagicDNS certificate (tailscale cert), swapped in live on renewal.")
        tls = f" ssl crt {TLS_PEM} alpn http/1.1"
    lines += [f"    bind {bind_address(a, proxy.port)}{tls} proto h1" for a in spec.addresses]
    lines += [f'    log-format "{LOG_FORMAT}"' if proxy.access_log else "    no log", ""]
    lines += [
        "    # Only origin-form targets (/path). Absolute-form (http://host/path), authority-form",
        "    # (CONNECT host:port) and asterisk-form (OPTIONS *) are refused outright.",
        "    http-request deny deny_status 400 unless { url_beg / }",
        "    # HAProxy forwards NUL, ESC, DEL... in header values; an engine may not expect them.",
        "    http-request deny deny_status 400 if { req.hdrs -m reg '[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]' }",
        f"    http-request return status 414 {_json(414, 'request target too long')} if {{ url,length gt {MAX_URL} }}",
        f"    http-request return status 431 {_json(431, 'request headers too large')} if {{ req.hdrs,length gt {MAX_HEADERS} }}",
        "",
        "    # A front (proxy.fronts) passes requests on with the name of who is calling.",
        f"    acl from_front src,map_ip({maps.FRONTS}{m}) -m found",
        "    # DNS rebinding: a web page on another name must not reach the engine through this",
        f"    # proxy. The Host must name this server ({maps.HOSTS}: its addresses, MagicDNS names",
        "    # and proxy.server_names), or be localhost on a loopback listener. (A front checked",
        "    # its own.)",
        f"    acl host_ours req.hdr(host),lower,map_str({maps.HOSTS}{m}) -m found",
        "    acl host_local req.hdr(host),lower -m reg ^(localhost|localhost\\.)(:[0-9]+)?$",
        "    acl on_loopback dst -m ip 127.0.0.0/8 ::1",
        f"    http-request return status 421 {_json(421, 'this Host does not name this server (proxy.server_names)')} "
        "unless host_ours or host_local on_loopback or from_front",
        "",
        "    # Request bodies: a declared length, and not too large.",
        "    # req.hdr_val stops at 32 bits: a Content-Length too long to compare is refused as too large.",
        f"    http-request return status 413 {_json(413, f'request body larger than {proxy.max_body_bytes} bytes (proxy.max_body_mb)')} "
        "if { req.hdr(content-length) -m found } !{ req.hdr(content-length) -m reg '^[0-9]{1,9}$' }",
        f"    http-request return status 413 {_json(413, f'request body larger than {proxy.max_body_bytes} bytes (proxy.max_body_mb)')} "
        f"if {{ req.hdr_val(content-length) gt {proxy.max_body_bytes} }}",
        f"    http-request return status 411 {_json(411, 'send the request body with a Content-Length, not chunked')} "
        "if { req.hdr(transfer-encoding) -m found }",
        "    # The whole body, before anything else happens to the request: a body that stalls",
        "    # gets 408 after proxy.request_timeout and never reaches the engine.",
        f"    http-request wait-for-body time {ms(proxy.request_timeout)} at-least {proxy.max_body_bytes}",
        "",
        *_identity(spec),
        "    # Model management is never forwarded, whatever the allowlist says.",
        f"    http-request return status 403 {_json(403, 'forbidden: model management is not on the ai-server allowlist')} "
        f"if {{ path {MANAGEMENT_PATHS} }} or {{ path_beg {MANAGEMENT_PREFIX} }}",
        "",
        "    # The allowlist (allowlist.toml), from two map files swapped live, no reload:",
        f"    #   {maps.ALLOW_PATHS}: path regexes some rule names (else 403)",
        f"    #   {maps.ALLOW_ROUTES}: METHOD@path regexes a rule allows (else 405)",
        "    # A request is forwarded when any rule allows its method on its path.",
        "    http-request set-var(txn.path) path",
        f"    acl path_known var(txn.path),map_reg({maps.ALLOW_PATHS}{m}) -m found",
        "    http-request set-var(txn.route) method,concat(@,txn.path)",
        f"    acl route_ok var(txn.route),map_reg({maps.ALLOW_ROUTES}{m}) -m found",
        f"    http-request return status 403 {_json(403, 'forbidden: this endpoint is not on the ai-server allowlist')} "
        "unless path_known",
        "    # A named path with a method no rule allows on it: 405, with every method that is.",
        "    http-request set-var(txn.allow) str(none) unless route_ok",
    ]
    for method in METHODS:
        lines.append(f"    http-request set-var(txn.allow) \"var(txn.allow),concat(', {method}')\" if !route_ok "
                     f"{{ str({method}@),concat(,txn.path),map_reg({maps.ALLOW_ROUTES}{m}) -m found }}")
    lines += [
        "    http-request return status 405 content-type application/json "
        "lf-string '{\"error\":\"method not allowed: use %[var(txn.allow),bytes(6)]\",\"status\":405}' "
        "hdr Allow \"%[var(txn.allow),bytes(6)]\" unless route_ok",
        "",
        *_policy(spec),
        *_live(),
    ]
    lines.append("    # Headers only the proxy may set (option forwardfor adds X-Forwarded-For), and the")
    lines.append("    # client's ai-server token, which is the proxy's business only.")
    lines += [f"    http-request del-header {header}" for header in DROPPED_HEADERS]
    lines += ["    http-request del-header Authorization if { var(txn.token) -m found }",
              "    http-request del-header X-Api-Key if { var(txn.key) -m found }"]
    if spec.config.fronting:
        return lines + _node_routing(spec)
    lines += _local_routing(spec)  # (a front routes to its own engine through its `local` frontend)
    # A front reads how many generations this node runs at once (its maxconn there).
    lines.append(f"    http-response set-header {SLOTS_HEADER} {spec.config.engine.slots} if {{ var(txn.path) -m str /v1/models }}")
    return lines


def _engine_models_answer(spec: RenderInput) -> list[str]:
    """llama-server lists each model's command line (home-directory paths, a loopback port):
    /v1/models is answered here, from the clean list the supervisor keeps in a map."""
    if spec.config.engine.kind != "llama-server" or spec.config.fronting:
        return []
    models = f"{maps.ENGINE_MODELS}{spec.map_suffix}"
    return [
        f"    # llama-server's /v1/models names this machine's files and ports: answered here from {maps.ENGINE_MODELS},",
        "    # the supervisor's clean copy of it; until it has one, 503 rather than the engine's.",
        f"    http-request return status 200 content-type application/json lf-string \"%[str(v1),map_str({models})]\" "
        f"hdr {SLOTS_HEADER} {spec.config.engine.slots} if {{ path /v1/models }} METH_GET {{ str(v1),map_str({models}) -m found }}",
        f"    http-request return status 503 {_json(503, 'the engine model list is not read yet')} hdr Retry-After 1 "
        "if { path /v1/models } METH_GET",
        "",
    ]


def _local_routing(spec: RenderInput) -> list[str]:
    """To this machine's engine: held while it restarts, generations through the queue."""
    engine_addr = f"127.0.0.1:{spec.config.engine.port}"
    lines: list[str] = _engine_models_answer(spec)
    if spec.lua:
        lines += [
            "    # While the supervisor drains and restarts the engine, allowed requests wait here",
            f"    # (at most proxy.queue_timeout) instead of failing. {maps.HOLD} says when.",
            f"    http-request lua.ai_server_hold if {{ str(hold),map({maps.HOLD},0) -m str 1 }}",
            "",
        ]
    return lines + [
        "    # The engine sees its own loopback name: Ollama refuses a Host it does not consider",
        "    # local, and the check above has already made sure the client's named this server.",
        f"    http-request set-header Host {engine_addr}",
        "",
        *_queue(spec),
        "    default_backend engine",
    ]


def _node_routing(spec: RenderInput) -> list[str]:
    m = spec.map_suffix
    unknown = ("content-type application/json lf-string '{\"error\":\"no node has this model\","
               "\"model\":\"%[var(txn.model)]\",\"models\":%[str(list),map_str(" + maps.NODE_UNION + m + ",[])],"
               "\"status\":404}'")
    return [
        "    # Several machines behind this address ([[node]]): a request goes to a node that has",
        f"    # its model ({maps.NODE_MODELS}: model -> the backend of the nodes that have it,",
        "    # swapped in live by the supervisor as it reads what each node has). The model lists",
        "    # are the union across nodes, answered here.",
        f"    http-request return status 200 content-type application/json lf-string \"%[str(v1),map_str({maps.NODE_UNION}{m},-)]\" "
        "if { path /v1/models } METH_GET",
        f"    http-request return status 200 content-type application/json lf-string \"%[str(tags),map_str({maps.NODE_UNION}{m},-)]\" "
        "if { path /api/tags } METH_GET",
        f"    http-request set-var(txn.node_backend) var(txn.model),map_str({maps.NODE_MODELS}{m}) if {{ var(txn.model) -m found }}",
        f"    http-request return status 404 {unknown} if {{ var(txn.model) -m found }} !{{ var(txn.node_backend) -m found }}",
        "    # Who is calling, for the node: it trusts this from its fronts only (proxy.fronts).",
        "    http-request set-header X-Ai-Server-Client %[var(txn.client)]",
        "    http-request set-header X-Ai-Server-Class %[var(txn.priority)]",
        "    use_backend %[var(txn.node_backend)] if { var(txn.node_backend) -m found }",
        "    # A request that names no model (/api/version, say): any node.",
        "    default_backend any_node",
    ]


def _local_frontend(spec: RenderInput) -> list[str]:
    return [
        "frontend local",
        "    # This machine's own engine, as one of the nodes: the front has judged the request;",
        "    # here it waits for the engine like any local request.",
        f"    bind unix@{LOCAL_SOCKET} mode 600",
        "    no log",
        f"    http-request set-var(txn.client) req.hdr(x-ai-server-client) if {{ req.hdr(x-ai-server-client) -m reg {CLIENT_NAME} }}",
        "    http-request set-var(txn.priority) req.hdr(x-ai-server-class)",
        "    http-request del-header X-Ai-Server-Client",
        "    http-request del-header X-Ai-Server-Class",
        "    # The front's health check of this node: ready while the engine answers, and while a",
        "    # restart is under way (what arrives then waits here for it, as on a single machine).",
        f"    acl local_health path {LOCAL_HEALTH_PATH}",
        f"    http-request return status 200 content-type text/plain string ready if local_health {{ str(hold),map({maps.HOLD},0) -m str 1 }}",
        "    http-request set-var(txn.local_health) bool(1) if local_health",
        f"    http-request set-path {spec.engine_health_path} if local_health",
        "    use_backend engine if { var(txn.local_health) -m bool }",
        *_local_routing(spec),
    ]


def _queue(spec: RenderInput) -> list[str]:
    proxy = spec.config.proxy
    window = int(proxy.priority_window * 1000)
    full = ("content-type application/json lf-string '{\"error\":\"the queue for an engine slot is full "
            "(proxy.queue_max)\",\"queue\":\"generate\",\"depth\":%[queue(generate)],\"status\":503}' "
            f"hdr Retry-After {RETRY_AFTER_S}")
    return [
        f"    # Generation requests wait here for one of the engine's {spec.config.engine.slots} slots (engine.parallel).",
        f"    acl generation path {GENERATION_PATHS}",
        "    # Their place in the queue is their arrival time shifted by their client's priority:",
        f"    # interactive {proxy.priority_window:g} s earlier, batch {proxy.priority_window:g} s later (proxy.priority_window).",
        "    # FIFO within a class; a batch request goes ahead of interactive ones that arrive more",
        f"    # than {2 * proxy.priority_window:g} s after it, so it never waits forever.",
        f"    http-request set-priority-offset int(-{window}) if generation {{ var(txn.priority) -m str interactive }}",
        f"    http-request set-priority-offset int({window}) if generation {{ var(txn.priority) -m str batch }}",
        f"    http-request return status 503 {full} if generation {{ queue(generate) ge {proxy.queue_max} }}",
        "    # Counted per class while queued or running (the gate counts the running ones).",
        "    http-request track-sc1 var(txn.priority) table classes if generation",
        "    http-request set-header X-Ai-Server-Class %[var(txn.priority)] if generation",
        "    http-request set-header X-Ai-Server-Client %[var(txn.client)] if generation",
        "    use_backend generate if generation",
    ]


def _identity(spec: RenderInput) -> list[str]:
    m = spec.map_suffix
    return [
        "    # From a front (proxy.fronts), who is calling is what it says; from anyone else, saying",
        "    # it is refused.",
        f"    http-request return status 403 {_json(403, 'only a front (proxy.fronts) may say who is calling')} "
        "if { req.hdr_cnt(x-ai-server-client) gt 0 } !from_front",
        f"    http-request set-var(txn.client) req.hdr(x-ai-server-client) if from_front {{ req.hdr(x-ai-server-client) -m reg {CLIENT_NAME} }}",
        "    # Who is calling (clients.toml): a token, else the tailnet peer the connection comes",
        "    # from, else \"unknown\". A token is `ais_` and 43 more characters, in Authorization:",
        "    # Bearer or x-api-key; anything else there (the dummy keys SDKs insist on) is no token.",
        "    # A header that tries to be one and is not a known token gets 401, never the device's",
        f"    # policy. {maps.TOKENS}: SHA-256 -> client; {maps.PEERS}: peer address -> client.",
        "    http-request deny deny_status 400 if { req.hdr_cnt(authorization) gt 1 } or { req.hdr_cnt(x-api-key) gt 1 }",
        "    acl token_attempt req.hdr(authorization) -m sub ais_",
        "    acl token_attempt req.hdr(x-api-key) -m sub ais_",
        f"    http-request set-var(txn.token) req.hdr(authorization),bytes(7) "
        f"if {{ req.hdr(authorization) -m reg -i '^bearer {TOKEN_PATTERN}$' }}",
        f"    http-request set-var(txn.key) req.hdr(x-api-key) if {{ req.hdr(x-api-key) -m reg '^{TOKEN_PATTERN}$' }}",
        "    http-request set-var(txn.token) var(txn.key) if !{ var(txn.token) -m found } { var(txn.key) -m found }",
        f"    http-request set-var(txn.client) var(txn.token),sha2(256),hex,lower,map_str({maps.TOKENS}{m}) "
        "if { var(txn.token) -m found } !{ var(txn.client) -m found }",
        f"    http-request return status 401 {_json(401, 'unknown or malformed ai-server token')} hdr WWW-Authenticate Bearer "
        "if token_attempt !{ var(txn.client) -m found }",
        f"    http-request return status 401 {_json(401, 'two different ai-server tokens')} hdr WWW-Authenticate Bearer "
        "if { var(txn.key) -m found } !{ var(txn.key),strcmp(txn.token) eq 0 }",
        "    # A peer address counts only on a tailnet listener.",
        f"    http-request set-var(txn.client) src,map_ip({maps.PEERS}{m}) "
        f"if !{{ var(txn.client) -m found }} {{ dst -m ip {TAILNET_RANGES} }}",
        "    http-request set-var(txn.client) str(unknown) if !{ var(txn.client) -m found }",
        f"    http-request set-var(txn.flags) var(txn.client),map_str({maps.CLIENT_FLAGS}{m},-)",
        f"    http-request return status 403 {_refusal(403, 'unknown', 'this device is not a client ([unknown] policy = deny)')} "
        "if { var(txn.flags) -m sub d }",
        "",
    ]


def _policy(spec: RenderInput) -> list[str]:
    m = spec.map_suffix
    lines = [
        "    # The client's own policy, within the allowlist: its paths, its models, its rate and",
        "    # how many requests it may have in flight (clients.toml, swapped in live).",
        f"    http-request return status 403 {_refusal(403, 'path', 'this path is not allowed for this client')} "
        f"if {{ var(txn.flags) -m sub p }} !{{ var(txn.client),concat(@,txn.route),map_reg({maps.CLIENT_ROUTES}{m}) -m found }}",
    ]
    if spec.lua:
        lines += [
            "    # The model, as the engine will read it: a {model} path segment and the body's",
            "    # top-level model/name keys (ai_server.lua). Two different names: 400.",
            "    http-request lua.ai_server_model",
            f"    http-request return status 400 {_refusal(400, 'model', 'the request names two different models')} "
            "if { var(txn.model_ambiguous) -m found }",
            "    acl model_restricted var(txn.flags) -m sub m",
            f"    acl model_ok var(txn.client),concat(@,txn.model),map_reg({maps.CLIENT_MODELS}{m}) -m found",
            f"    http-request return status 403 {_refusal(403, 'model', 'this model is not allowed for this client')} "
            "if model_restricted { var(txn.model) -m found } !model_ok",
            f"    http-request return status 403 {_refusal(403, 'model', 'this client may only use some models, and the request names none it can be judged by')} "
            "if model_restricted !{ var(txn.model) -m found } { req.body_size gt 0 }",
        ]
    else:
        lines += [
            "    # No Lua in this HAProxy: the model cannot be read, so a client whose models are",
            "    # restricted is refused rather than let through unchecked.",
            f"    http-request return status 403 {_refusal(403, 'model', 'model policy needs an HAProxy with Lua')} "
            "if { var(txn.flags) -m sub m }",
        ]
    lines += [
        f"    http-request set-var(txn.priority) var(txn.client),map_str({maps.CLIENT_PRIORITY}{m},normal)",
        "    http-request track-sc0 var(txn.client) table clients",
        f"    http-request set-var(txn.rpm) var(txn.client),map_str({maps.CLIENT_RPM}{m},0)",
        f"    http-request return status 429 {_refusal(429, 'rpm', 'over the requests per minute this client may make')} "
        f"hdr Retry-After \"%[var(txn.client),map_str({maps.CLIENT_RETRY}{m},60)]\" "
        "if { var(txn.rpm) -m int gt 0 } { sc_http_req_rate(0),sub(txn.rpm) -m int gt 0 }",
        f"    http-request set-var(txn.concurrency) var(txn.client),map_str({maps.CLIENT_CONCURRENCY}{m},0)",
        f"    http-request return status 429 {_refusal(429, 'concurrency', 'this client has as many requests in flight as it may')} "
        "hdr Retry-After 1 if { var(txn.concurrency) -m int gt 0 } { sc0_trackers,sub(txn.concurrency) -m int gt 0 }",
        "",
    ]
    return lines


def _live() -> list[str]:
    return [
        f"    # Who is calling now, for the dashboard: each generation in progress holds an entry in {LIVE_TABLE}",
        "    # (client, model, when it began, from where) until it ends. Names and models are validated.",
        "    http-request set-var-fmt(txn.live) \"%[var(txn.client)]|%[var(txn.model)]|%[date(0,ms)]|%ci|%cp\"",
        f"    http-request track-sc2 var(txn.live) table {LIVE_TABLE} if {{ path {GENERATION_PATHS} }}",
        "",
    ]


def _engine_backends(spec: RenderInput) -> list[str]:
    engine_addr = f"127.0.0.1:{spec.config.engine.port}"
    proxy = spec.config.proxy
    busy = ("content-type application/json lf-string '{\"error\":\"no engine slot came free within "
            "proxy.queue_timeout, or the engine is down\",\"queue\":\"generate\",\"depth\":%[queue(generate)],"
            "\"engine_up\":%[nbsrv(engine)],\"status\":503}' " f"hdr Retry-After {RETRY_AFTER_S}")
    return [
        "backend generate",
        "    # The queue: at most engine.parallel generations reach the engine at once; the others",
        "    # wait here, served by priority, at most proxy.queue_timeout (then 503, never a hang).",
        f"    timeout queue {ms(proxy.queue_timeout)}",
        f"    http-error status 503 {busy}",
        f"    server gate unix@{GATE_SOCKET} maxconn {spec.config.engine.slots} track engine/engine",
        "",
        "frontend gate",
        "    # The far side of the slots: a request here holds one. It counts what runs, per class",
        "    # and per client, then goes on to the engine.",
        f"    bind unix@{GATE_SOCKET} mode 600",
        "    no log",
        "    http-request track-sc0 req.hdr(x-ai-server-class) table running_classes",
        "    http-request track-sc1 req.hdr(x-ai-server-client) table running_clients",
        "    http-request del-header X-Ai-Server-Class",
        "    http-request del-header X-Ai-Server-Client",
        "    default_backend engine",
        "",
        "backend engine",
        "    option httpchk",
        f"    http-check send meth GET uri {spec.engine_health_path} ver HTTP/1.1 hdr Host {engine_addr}",
        "    http-check expect status 200",
        "    # Checked every second; while down, every 250 ms, so a restarted engine is back at once.",
        f"    server engine {engine_addr} check inter 1s downinter 250ms fall 2 rise 1",
    ]


def _tables() -> list[str]:
    return [
        "backend clients",
        "    # Per client: requests in the last minute (rpm) and streams tracking it (in flight).",
        "    stick-table type string len 64 size 10k expire 10m store http_req_rate(60s)",
        "",
        "backend classes",
        "    # Per priority class: generation requests queued or running.",
        "    stick-table type string len 16 size 8 expire 1h",
        "",
        "backend running_classes",
        "    stick-table type string len 16 size 8 expire 1h",
        "",
        "backend running_clients",
        "    stick-table type string len 64 size 10k expire 10m",
        "",
        f"backend {LIVE_TABLE}",
        "    stick-table type string len 256 size 4k expire 10s",
        "",
    ]


def _node_backends(spec: RenderInput) -> list[str]:
    cfg = spec.config
    states = dict(spec.node_states)
    slots = dict(spec.node_slots)
    local = cfg.engine.kind != "none"
    gone = ("content-type application/json lf-string '{\"error\":\"no node that has this model answers\","
            "\"model\":\"%[var(txn.model)]\",\"status\":503}' " f"hdr Retry-After {RETRY_AFTER_S}")
    lines = []
    if local:
        lines += [
            f"backend node_{LOCAL_NODE}",
            "    # This machine's engine, as its `local` frontend sees it (see there): a restart does",
            "    # not take it out of rotation, an engine that is down and not coming back does.",
            "    option httpchk",
            f"    http-check send meth GET uri {LOCAL_HEALTH_PATH} ver HTTP/1.1",
            "    http-check expect status 200",
            "    timeout check 500ms",
            f"    server {LOCAL_NODE} unix@{LOCAL_SOCKET} check inter 500ms fastinter 200ms fall 2 rise 1",
            "",
        ]
    for node in cfg.nodes:
        lines += [
            f"backend node_{node.name}",
            f"    # {node.name} ({node.address}): its health. A node that stops answering is out within 2 s, back",
            "    # within a few once it answers again. Its proxy answering (even 403) means it serves.",
            "    option httpchk",
            f"    http-check send meth GET uri /v1/models ver HTTP/1.1 hdr Host {node.address}",
            "    http-check expect rstatus ^[234]",
            # Connect waits min(timeout connect, inter), then the answer `timeout check`; after one
            # miss the next check comes at fastinter: two misses take at most 0.5+0.5+0.2+0.5 s.
            "    timeout check 500ms",
            f"    server {node.name} {node.address} check inter 500ms fastinter 200ms fall 2 rise 2",
            "",
        ]

    def servers(backend: str, backups: bool) -> list[str]:
        out = []
        targets = [(n.name, n.address, f"node_{n.name}/{n.name}") for n in cfg.nodes]
        if local:
            targets.append((LOCAL_NODE, f"unix@{LOCAL_SOCKET}", f"node_{LOCAL_NODE}/{LOCAL_NODE}"))
        for name, address, tracked in targets:
            for server, backup in ((name, ""), (names.backup_name(name), " backup")):
                if backup and not backups:
                    continue
                # Not ready: disabled (maint) at start, when nothing is in flight; the supervisor
                # then sets it to drain, and never to maint again (see nodes.server_states).
                state = states.get((backend, server), "drain" if backups else "ready")
                flags = "" if state == "ready" else " disabled"
                limit = f" maxconn {slots[name]}" if slots.get(name) else ""
                out.append(f"    server {server} {address}{backup} track {tracked}{limit}{flags} "
                           "on-marked-down shutdown-sessions")
        return out

    for i in range(names.MODEL_BACKENDS):
        lines += [
            f"backend m{i}",
            *(["    # One model's nodes (which model: node-models.map). Nodes that have it loaded are",
               "    # the servers; nodes that have it but not loaded, their backups, used only when no",
               "    # loaded one answers. Among either, the fewest in flight. A node that dies takes",
               "    # its streams with it (shutdown-sessions): they end at once, never hang."] if i == 0 else []),
            "    balance leastconn",
            "    option allbackups",
            *(["    # A node that refuses the connection (or does not take it within 1 s): the request,",
               "    # not yet sent, is tried again on another node (retry-on conn-failure only). When",
               "    # every other node is at its maxconn, HAProxy can only pick the dead one again: a",
               "    # silent node's 1 s connect timeouts then outlast the health check (the request",
               "    # queues for a live node); a refusing one fails at once, 503, until it is marked",
               "    # down (at most 0.7 s)."] if i == 0 else []),
            "    retries 3",
            "    option redispatch 1",
            "    timeout connect 1s",
            f"    http-error status 503 {gone}",
            *servers(f"m{i}", backups=True),
            "",
        ]
    lines += [
        "backend any_node",
        "    # Requests that name no model: any node, the fewest in flight.",
        "    balance leastconn",
        "    retries 3",
        "    option redispatch 1",
        "    timeout connect 1s",
        f"    http-error status 503 {gone}",
        *servers("any_node", backups=False),
    ]
    return lines
