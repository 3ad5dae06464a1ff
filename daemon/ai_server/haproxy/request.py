"""The request path of haproxy.cfg's `ai_server` frontend: the rules that judge a request,
in the order access/policy.py decides it (that module is their model; a property test holds
the running proxy to it).

    the request line and headers -> this server's names -> how the body is framed
    -> who is calling -> the allowlist -> the client's paths, rate, concurrency
    -> the memory bodies take -> the body, whole -> the model it names

Everything before the body is decided from the request line and headers alone: a device that
is refused costs a few hundred bytes of headers, never a buffered body. No text a user wrote
is in these rules: names, rules and limits are in the map files (maps.py), read here by
exact lookups; the only regexes built from configuration are the allowlist's and the model
globs' (validated, escaped) and they are keyed by ids we make, never by a name.
"""

from __future__ import annotations

from ai_server.access import policy
from ai_server.access.allowlist import METHODS
from ai_server.haproxy import maps, metering
from ai_server.haproxy.answers import refusal, shape_rules
from ai_server.haproxy.spec import RenderInput, ms

TAILNET_RANGES = "100.64.0.0/10 fd7a:115c:a1e0::/48"
TOKEN_PATTERN = "ais_[A-Za-z0-9_-]{43}"
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# Requests that could change the model store: refused here whatever the maps say.
MANAGEMENT_PATHS = "/api/pull /api/push /api/create /api/copy /api/delete"
MANAGEMENT_PREFIX = "/api/blobs/"
# Headers the engine might trust or act on, which only the proxy may set: the client's own
# are dropped. Upgrade (and Connection, which can name it) would switch the connection to
# another protocol past every check.
DROPPED_HEADERS = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X-Forwarded-For",
                   "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port", "Forwarded", "X-Real-IP",
                   "X-Client-IP", "True-Client-IP", "Upgrade", "Connection", "HTTP2-Settings",
                   "X-Ai-Server-Class", "X-Ai-Server-Client")
# Retry-After for "not yet": the tailnet is read again every 5 s; a body slot turns over fast.
RETRY_S = 5
# Retry-After over rpm: a bound that is true, not a guess (see _limits).
RPM_RETRY_S = 61
NOT_KNOWN = "who is calling is not known yet (tailscale status)"
NO_MODEL = "this client may only use some models, and the request names none it can be judged by"
_CONTROL = "'[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]'"


def rules(spec: RenderInput) -> list[str]:
    return [*shape_rules(), *_request_line(spec), *_host(spec), *_framing(spec), *_identity(spec),
            *_allowlist(spec), *_limits(spec), *metering.quota(spec), *_body(spec), *_model(spec), *_headers(), *_admitted()]


def _request_line(spec: RenderInput) -> list[str]:
    return [
        "    # Only origin-form targets (/path). Absolute-form (http://host/path), authority-form",
        "    # (CONNECT host:port) and asterisk-form (OPTIONS *) are refused outright.",
        f"    http-request {refusal(400, 'target', 'only origin-form request targets (/path)', client=False)} "
        "unless { url_beg / }",
        f"    http-request {refusal(414, 'target_too_long', 'request target too long', client=False)} "
        f"if {{ url,length gt {policy.MAX_TARGET} }}",
        f"    http-request {refusal(431, 'headers_too_large', 'request headers too large', client=False)} "
        f"if {{ req.hdrs,length gt {policy.MAX_HEADERS} }}",
        "    # HAProxy forwards NUL, ESC, DEL... in header values; an engine may not expect them.",
        f"    http-request {refusal(400, 'header', 'a control character in a header', client=False)} "
        f"if {{ req.hdrs -m reg {_CONTROL} }}",
        "",
    ]


def _host(spec: RenderInput) -> list[str]:
    message = "this Host does not name this server (proxy.server_names)"
    return [
        "    # A tailnet listener: where a peer's address, and a front's word, mean something.",
        f"    acl on_tailnet dst -m ip {TAILNET_RANGES}",
        "    # A front (proxy.fronts) passes requests on with the name of who is calling.",
        f"    acl from_front src,map_ip({maps.FRONTS}) -m found",
        "    # DNS rebinding: a web page on another name must not reach the engine through this",
        f"    # proxy. The Host must name this server ({maps.HOSTS}: its addresses, MagicDNS names",
        "    # and proxy.server_names), or be localhost on a loopback listener. (A front checked",
        "    # its own.)",
        f"    acl host_ours req.fhdr(host),lower,map_str({maps.HOSTS}) -m found",
        "    acl host_local req.fhdr(host),lower -m reg ^(localhost|localhost\\.)(:[0-9]+)?$",
        "    acl on_loopback dst -m ip 127.0.0.0/8 ::1",
        f"    http-request {refusal(421, 'host', message, client=False)} "
        "unless host_ours or host_local on_loopback or from_front on_tailnet",
        "",
    ]


def _framing(spec: RenderInput) -> list[str]:
    limit = spec.config.proxy.max_body_bytes
    large = refusal(413, "body_too_large", f"request body larger than {limit} bytes (proxy.max_body_mb)", client=False)
    return [
        "    # Request bodies: a declared length, and not too large. req.hdr_val stops at 32 bits:",
        "    # a Content-Length too long to compare is refused as too large.",
        f"    http-request {large} if {{ req.hdr(content-length) -m found }} "
        "!{ req.hdr(content-length) -m reg '^[0-9]{1,9}$' }",
        f"    http-request {large} if {{ req.hdr_val(content-length) gt {limit} }}",
        f"    http-request {refusal(411, 'chunked', 'send the request body with a Content-Length, not chunked', client=False)} "
        "if { req.hdr(transfer-encoding) -m found }",
        "    acl has_body req.hdr_val(content-length) gt 0",
        "",
    ]


def _identity(spec: RenderInput) -> list[str]:
    tokens, peers, clients = maps.TOKENS, maps.PEERS, maps.CLIENTS
    bearer = "'^[Bb][Ee][Aa][Rr][Ee][Rr] " + TOKEN_PATTERN + "$'"
    auth = (("WWW-Authenticate", "Bearer"),)
    return [
        "    # Who is calling: a front's word, else a token, else the tailnet peer the connection",
        "    # comes from, else \"unknown\". Only a front may say it; from anyone else, saying it is",
        f"    # refused. {maps.TOKENS}: SHA-256 -> client; {maps.PEERS}: peer address -> client.",
        f"    http-request {refusal(403, 'front', 'only a front (proxy.fronts) may say who is calling', client=False)} "
        "if { req.hdr_cnt(x-ai-server-client) gt 0 } !from_front or { req.hdr_cnt(x-ai-server-client) gt 0 } !on_tailnet",
        "    http-request set-var(txn.client) req.fhdr(x-ai-server-client) "
        f"if from_front on_tailnet {{ req.fhdr(x-ai-server-client) -m reg {NAME_PATTERN} }}",
        "    # A token is `ais_` and 43 more characters, in Authorization: Bearer or x-api-key;",
        "    # anything else there (the dummy keys SDKs insist on) is no token. A header that tries",
        "    # to be one and is not a known token gets 401, never the device's policy.",
        f"    http-request {refusal(400, 'token', 'one Authorization and one x-api-key header at most', client=False)} "
        "if { req.fhdr_cnt(authorization) gt 1 } or { req.fhdr_cnt(x-api-key) gt 1 }",
        "    acl token_attempt req.fhdr(authorization) -m sub ais_",
        "    acl token_attempt req.fhdr(x-api-key) -m sub ais_",
        f"    http-request set-var(txn.token) req.fhdr(authorization),bytes(7) if {{ req.fhdr(authorization) -m reg {bearer} }}",
        f"    http-request set-var(txn.key) req.fhdr(x-api-key) if {{ req.fhdr(x-api-key) -m reg '^{TOKEN_PATTERN}$' }}",
        "    http-request set-var(txn.token) var(txn.key) if !{ var(txn.token) -m found } { var(txn.key) -m found }",
        f"    http-request set-var(txn.client) var(txn.token),sha2(256),hex,lower,map_str({tokens}) "
        "if { var(txn.token) -m found } !{ var(txn.client) -m found }",
        f"    http-request {refusal(401, 'token', 'unknown or malformed ai-server token', client=False, headers=auth)} "
        "if token_attempt !{ var(txn.client) -m found }",
        f"    http-request {refusal(401, 'token', 'two different ai-server tokens', client=False, headers=auth)} "
        "if { var(txn.key) -m found } !{ var(txn.key),strcmp(txn.token) eq 0 }",
        "    # A peer address counts only on a tailnet listener. A name this server's clients.toml",
        f"    # does not know is \"unknown\". {maps.CLIENTS}: name -> id/flags/rpm/retry/concurrency/priority.",
        f"    http-request set-var(txn.client) src,map_ip({peers}) if !{{ var(txn.client) -m found }} on_tailnet",
        "    # Tailscale carries packets only from nodes in this machine's map: a caller the map",
        "    # does not show is one the view has lost (stale, emptied), not a stranger.",
        "    http-request set-var(txn.unseen) bool(1) if !{ var(txn.client) -m found } on_tailnet",
        f"    http-request set-var(txn.pol) var(txn.client),map_str({clients}) if {{ var(txn.client) -m found }}",
        "    http-request set-var(txn.client) str(unknown) if !{ var(txn.pol) -m found }",
        f"    http-request set-var(txn.pol) str(unknown),map_str({clients}) if !{{ var(txn.pol) -m found }}",
        "    http-request set-var(txn.flags) var(txn.pol),field(2,/)",
        "    # No peer map read yet (the tailscale CLI failing since start), or a caller the map",
        "    # does not show, while clients.toml names devices: who is calling is not known, and",
        "    # guessing \"unknown\" could widen access.",
        f"    http-request {refusal(503, 'identity', NOT_KNOWN, headers=(('Retry-After', str(RETRY_S)),))} "
        "if { var(txn.flags) -m sub w } on_tailnet or { var(txn.flags) -m sub v } { var(txn.unseen) -m bool }",
        f"    http-request {refusal(403, 'unknown', 'this device is not a client ([unknown] policy = deny)')} "
        "if { var(txn.flags) -m sub d }",
        "",
    ]


def _allowlist(spec: RenderInput) -> list[str]:
    paths, routes = maps.ALLOW_PATHS, maps.ALLOW_ROUTES
    lines = [
        "    # Model management is never forwarded, whatever the allowlist says.",
        f"    http-request {refusal(403, 'management', 'forbidden: model management is not on the ai-server allowlist')} "
        f"if {{ path {MANAGEMENT_PATHS} }} or {{ path_beg {MANAGEMENT_PREFIX} }}",
        "    # The allowlist (allowlist.toml), from two map files swapped live, no reload:",
        f"    #   {maps.ALLOW_PATHS}: path regexes some rule names (else 403); m for a {{model}} rule",
        f"    #   {maps.ALLOW_ROUTES}: METHOD@path regexes a rule allows (else 405)",
        "    # A request is forwarded when any rule allows its method on its path.",
        "    http-request set-var(txn.path) path",
        f"    http-request set-var(txn.pathkind) var(txn.path),map_reg({paths})",
        f"    http-request {refusal(403, 'allowlist', 'forbidden: this endpoint is not on the ai-server allowlist')} "
        "unless { var(txn.pathkind) -m found }",
        "    http-request set-var(txn.route) method,concat(@,txn.path)",
        f"    http-request set-var(txn.route_ok) var(txn.route),map_reg({routes})",
        "    # A named path with a method no rule allows on it: 405, with every method that is.",
        "    http-request set-var(txn.allow) str(none) unless { var(txn.route_ok) -m found }",
    ]
    for method in METHODS:
        lines.append(f"    http-request set-var(txn.allow) \"var(txn.allow),concat(', {method}')\" "
                     f"if !{{ var(txn.route_ok) -m found }} {{ str({method}@),concat(,txn.path),map_reg({routes}) -m found }}")
    allowed = "%[var(txn.allow),bytes(6)]"
    return lines + [
        f"    http-request {refusal(405, 'method', f'method not allowed: use {allowed}', headers=(('Allow', allowed),))} "
        "unless { var(txn.route_ok) -m found }",
        "",
    ]


def _limits(spec: RenderInput) -> list[str]:
    routes = maps.CLIENT_ROUTES
    rpm = refusal(429, "rpm", "over the requests per minute this client may make",
                  headers=(("Retry-After", str(RPM_RETRY_S)),))
    busy = refusal(429, "concurrency", "this client has as many requests in flight as it may",
                   headers=(("Retry-After", "1"),))
    return [
        "    # The client's own policy, within the allowlist: its paths, then how many requests it",
        "    # made in the last minute and has in flight (table clients; an unknown device counts",
        "    # on its own, by its address).",
        f"    http-request {refusal(403, 'path', 'this path is not allowed for this client')} "
        f"if {{ var(txn.flags) -m sub p }} !{{ var(txn.pol),field(1,/),concat(@,txn.route),map_reg({routes}) -m found }}",
        "    http-request set-var(txn.track) var(txn.client)",
        "    http-request set-var(txn.src) src if { var(txn.client) -m str unknown }",
        "    http-request set-var(txn.track) str(unknown@),concat(,txn.src,) if { var(txn.client) -m str unknown }",
        "    http-request track-sc0 var(txn.track) table clients",
        *_rpm_comment(),
        "    http-request set-var(txn.rpm) var(txn.pol),field(3,/)",
        f"    http-request {rpm} "
        "if { var(txn.rpm) -m int gt 0 } { sc_gpc_rate(0,0),div(2),sub(txn.rpm) -m int ge 0 }",
        "    http-request set-var(txn.concurrency) var(txn.pol),field(5,/)",
        f"    http-request {busy} "
        "if { var(txn.concurrency) -m int gt 0 } { sc0_trackers,sub(txn.concurrency) -m int gt 0 }",
        "    http-request set-var(txn.priority) var(txn.pol),field(6,/)",
        "",
    ]


def _rpm_comment() -> list[str]:
    # The arithmetic, so that the Retry-After can be checked against HAProxy's source
    # (src/freq_ctr.c, the same in 2.6 and 3.x): a rate over P = 60 s is read as
    #     floor((prev * remain + curr * P) / P)
    # where curr counts the current period [T, T+P), prev the one before, remain = T+P-now;
    # and as prev itself when curr = 0 and prev <= 1 (its "flapping correction"). Periods
    # follow each other (T += P), counting only admitted requests, each twice (2 per request:
    # so prev is never 1 and the correction never holds a client a second period). A request
    # is refused when the rate >= 2 * rpm, so curr <= 2 * rpm. Refused at t in [T, T+P) and
    # back at t' >= t + 61 s > T + P with nothing admitted meanwhile: t' is in the next period
    # (or later: rate 0), where curr = 0, prev <= 2 * rpm and remain = T + 2P - t' < P, so the
    # rate is floor(prev * remain / P) < 2 * rpm: served. Hence Retry-After: 61 for any rpm
    # (60 would fail when refused in a period's first millisecond); the openai SDK honours
    # up to 120.
    return [
        "    # rpm counts only admitted requests (sc-inc-gpc at the end, twice: see request.py's",
        "    # _rpm_comment for the arithmetic), so a refused request costs the client nothing, and",
        f"    # a client that waits the Retry-After it is given ({RPM_RETRY_S} s) is served.",
    ]


def _admitted() -> list[str]:
    return [
        "",
        "    # Admitted by every rule above: count it toward the client's rpm (twice, see _limits).",
        "    http-request sc-inc-gpc(0,0) if { var(txn.rpm) -m int gt 0 }",
        "    http-request sc-inc-gpc(0,0) if { var(txn.rpm) -m int gt 0 }",
    ]


def _body(spec: RenderInput) -> list[str]:
    proxy = spec.config.proxy
    classes = policy.body_classes(proxy.max_body_bytes, proxy.body_memory_bytes)
    full = refusal(503, "bodies", "too many request bodies in flight (proxy.body_memory_mb)",
                   headers=(("Retry-After", str(RETRY_S)),))
    lines = [
        "    # The memory bodies take, bounded: bodies over 64 KiB (proxy.body_memory_mb) in size",
        "    # classes, each class allowed an equal share, by its largest size, counted from their",
        "    # headers, before a byte of them is read; smaller ones (b0) below, once they have arrived.",
    ]
    (small, small_upper, small_limit), large = classes[0], classes[1:]
    lower = small_upper
    for name, upper, _limit in large:
        lines.append(f"    http-request set-var(txn.bclass) str({name}) if {{ req.hdr_val(content-length) gt {lower} }}")
        lower = upper
    lines.append("    http-request track-sc2 var(txn.bclass) table bodies if { var(txn.bclass) -m found }")
    for name, upper, limit in large:
        lines += [f"    # {name}: bodies up to {upper // 1024} KiB, {limit} at once",
                  f"    http-request {full} if {{ var(txn.bclass) -m str {name} }} {{ sc2_trackers gt {limit} }}"]
    unjudged = refusal(413, "body_unjudged", "the request body did not fit the proxy buffer whole")
    return lines + [
        "    # The whole body, before anything else happens to the request: a body that stalls",
        "    # gets 408 after proxy.request_timeout and never reaches the engine. The buffer holds",
        "    # the largest body with the largest headers (tune.bufsize); should it ever not, the",
        "    # request is refused, never judged on part of its body.",
        f"    http-request wait-for-body time {ms(proxy.request_timeout)} at-least {proxy.max_body_bytes} if has_body",
        "    http-request set-var(txn.clen) req.body_size if has_body",
        f"    http-request {unjudged} if has_body {{ req.body_len,sub(txn.clen) lt 0 }}",
        f"    # {small}: bodies up to {small_upper // 1024} KiB, {small_limit} at once, counted once they have arrived:",
        "    # what they bound is the model check's copies, and counted from their headers, one",
        "    # client holding that many requests without a body shut out every other body.",
        f"    http-request set-var(txn.bclass) str({small}) if has_body !{{ var(txn.bclass) -m found }}",
        f"    http-request track-sc2 var(txn.bclass) table bodies if {{ var(txn.bclass) -m str {small} }}",
        f"    http-request {full} if {{ var(txn.bclass) -m str {small} }} {{ sc2_trackers gt {small_limit} }}",
        "",
    ]


def _model(spec: RenderInput) -> list[str]:
    if not spec.lua:
        return [
            "    # No Lua in this HAProxy: the model cannot be read, so a client whose models are",
            "    # restricted is refused rather than let through unchecked.",
            f"    http-request {refusal(403, 'model', 'model policy needs an HAProxy with Lua')} "
            "if { var(txn.flags) -m sub m }",
            "",
        ]
    models = maps.CLIENT_MODELS
    return [
        "    # The model, as the engine will read it: a {model} path segment and the body's",
        "    # top-level model/name keys (ai_server.lua), only where there is one to read. Its",
        "    # verdict defaults to refusal: a check that fails or runs out of time refuses.",
        "    acl model_check req.hdr_val(content-length) gt 0",
        "    acl model_check var(txn.pathkind) -m str m",
        f"    http-request set-var(txn.model_rules) str(rules),map_str({maps.MODEL_PATHS}) if model_check",
        "    http-request lua.ai_server_model if model_check",
        f"    http-request {refusal(413, 'body_unjudged', 'the request body could not be judged in time')} "
        "if model_check !{ var(txn.model_verdict) -m str ok bad two }",
        f"    http-request {refusal(400, 'model', 'the request names two different models')} "
        "if { var(txn.model_verdict) -m str two }",
        "    acl model_restricted var(txn.flags) -m sub m",
        f"    acl model_ok var(txn.pol),field(1,/),concat(@,txn.model),map_reg({models}) -m found",
        f"    http-request {refusal(403, 'model', 'this model is not allowed for this client')} "
        "if model_restricted { var(txn.model) -m found } !model_ok",
        f"    http-request {refusal(403, 'model', NO_MODEL)} "
        "if model_restricted !{ var(txn.model) -m found } has_body",
        "",
    ]


def _headers() -> list[str]:
    names = "|".join(h.lower() for h in DROPPED_HEADERS)
    return [
        "    # Headers only the proxy may set (option forwardfor adds X-Forwarded-For), and the",
        "    # client's ai-server token, which is the proxy's business only.",
        f"    http-request del-header ^({names})$ -m reg",
        "    http-request del-header Authorization if { var(txn.token) -m found }",
        "    http-request del-header X-Api-Key if { var(txn.key) -m found }",
    ]
