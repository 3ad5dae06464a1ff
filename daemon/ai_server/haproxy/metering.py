"""haproxy.cfg's sections for usage: where the access log goes (the request log, lossless),
what each line carries, which requests are metered (the filter in haproxy/meter.py), the
quota refusal, and max_seconds.

    global      log_target        the request log: a regular file, inherited as a descriptor
    frontend    log_format        one line per request, after its whole answer
                quota             over a quota: 429 until its window resets (request.py calls it,
                                  among the limits, so a refused request costs no rpm)
                metered           after the rules: what the filter needs to know
    backends    meter_backend     the filter, and max_seconds as the server timeout

The text here is ours: numbers, our variable and map names; a client's name reaches a line
only through %[var(txn.client)] (validated names) and the quota map's fields (numbers, our
quota names and an ISO time: maps.quota_map).
"""

from __future__ import annotations

from ai_server.haproxy import maps, meter
from ai_server.haproxy.answers import refusal
from ai_server.haproxy.logfmt import LOG_FORMAT, UNIQUE_ID
from ai_server.haproxy.spec import GENERATION_PATHS, RenderInput

# The request log: HAProxy's access log (and its notices), written to a regular file the
# supervisor opened and hands HAProxy as a descriptor; and the metering filter's start lines.
SPOOL = "requests.spool"
STARTS = "starts.spool"
# Set on the requests the filter meters (the generation paths), in the public
# frontend only: a front's own engine, reached through its `local` frontend, is not metered twice.
METERED_VAR = "txn.metered"


def log_target(spec: RenderInput) -> list[str]:
    return [
        f"    # The access log and HAProxy's own notices are appended to the request log ({SPOOL}), a",
        f"    # regular file the supervisor opened and handed over as descriptor {spec.log_fd}: a write to",
        "    # it is never refused (a datagram socket drops lines under load), one thread never has",
        "    # two writes collide (nbthread), and the descriptor outlives reloads. The supervisor",
        "    # reads it into the usage ledger.",
        f"    log fd@{spec.log_fd} len 16384 format raw local0 info",
    ]


def log_format(spec: RenderInput) -> list[str]:
    return [
        "    # One line per request, after its whole answer (also for a cut one): who, what, the",
        "    # timings, and what the metering filter read from the engine's answer (txn.meter).",
        "    # Always logged: usage is read from it (proxy.access_log only silences the `request` event).",
        f"    unique-id-format {UNIQUE_ID}",
        f'    log-format "{LOG_FORMAT}"',
        "    # When the proxy had the request (epoch microseconds): time to first token runs from here.",
        "    http-request set-var(txn.t_in) date(0,us)",
        "",
    ]


def quota(spec: RenderInput) -> list[str]:
    q = "%[var(txn.quota),field({},|)]".format
    fields = f'"quota":"{q(2)}","used":{q(3)},"limit":{q(4)},"resets_at":"{q(5)}"'
    over = refusal(429, q(2), f"this client is over its {q(2)} quota until {q(5)}", fields=fields,
                   headers=(("Retry-After", "%[var(txn.quota_retry)]"),))
    return [
        "    # Over a quota (tokens_per_day, tokens_per_month, gpu_seconds_per_day): 429 until its window",
        f"    # resets. The supervisor writes the client into {maps.QUOTA} (reset epoch|quota|used|limit|",
        "    # resets_at) within a second of the crossing; what is already running finishes. Past the",
        "    # reset the proxy lets it through by itself, whatever the map still says. A front applies",
        "    # its own quotas; a node does not apply them again.",
        f"    http-request set-var(txn.quota) var(txn.client),map_str({maps.QUOTA}) "
        f"if {{ path {GENERATION_PATHS} }} !from_front",
        "    http-request set-var(txn.now) date() if { var(txn.quota) -m found }",
        "    http-request set-var(txn.quota_retry) var(txn.quota),field(1,|),sub(txn.now) if { var(txn.quota) -m found }",
        f"    http-request {over} if {{ var(txn.quota_retry) -m int gt 0 }}",
        "",
    ]


def metered(spec: RenderInput) -> list[str]:
    return [
        "    # Generations and embeddings are metered (the filter in the backends that reach an",
        f"    # engine or a node). A client's max_seconds ({maps.CLIENT_MAX_MS}, in ms) bounds how long",
        "    # one may hold an engine slot.",
        f"    http-request set-var({METERED_VAR}) bool(1) if {{ path {GENERATION_PATHS} }}",
        f"    http-request set-var(txn.req_bytes) req.body_size if {{ var({METERED_VAR}) -m bool }}",
        f"    http-request set-var(txn.max_ms) var(txn.client),map_str_int({maps.CLIENT_MAX_MS},0) "
        f"if {{ var({METERED_VAR}) -m bool }}",
        "",
    ]


def meter_backend(spec: RenderInput) -> list[str]:
    """In every backend that reaches an engine or a node: the metering filter (it reads only
    what the frontend marked metered), and max_seconds as the server timeout (an engine silent
    that long is cut too)."""
    lines = ["    http-request set-timeout server var(txn.max_ms) if { var(txn.max_ms) -m int gt 0 }"]
    if spec.lua:
        lines[:0] = [meter.filter_line(STARTS),
                     "    # What the answer is, for the filter to read on its first chunk: a Lua http_headers",
                     "    # callback would cost a call on each side of every metered request.",
                     f"    http-response set-var-fmt({meter.HEAD_VAR}) \"%[status]|%[res.fhdr(content-type,1)]|"
                     f"%[res.fhdr(content-encoding,1)]\" if {{ var({METERED_VAR}) -m bool }}"]
    return lines
