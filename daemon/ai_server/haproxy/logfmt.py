"""HAProxy's access log, as the supervisor reads it: one line per request, appended to the
request log file (the spool: see render.py's `log fd@`), and the metering filter's start lines.

Fixed, space-separated fields with the URI last, so nothing in it can shift the others;
HAProxy escapes control bytes and spaces in a logged URI as #XX. Every other field is a number,
HAProxy's own code, or one of our variables, which hold validated names only (the meter: codes,
digits and `,=*+!.`).
"""

from __future__ import annotations

from ai_server.haproxy.names import node_of

LOG_TAG = "ai-server-request"
START_TAG = "ai-server-start"
# Every request's id; txn.t_in: when the proxy had its headers (epoch microseconds).
UNIQUE_ID = "%Ts-%pid-%rt"
# who (the client) and the model are our variables: validated names, never free text.
LOG_FORMAT = (f"{LOG_TAG} %ID %[var(txn.t_in)] %ci %cp %ST %B %U %TR %Tw %Tc %Tr %Ta %tsc %b %s %[var(txn.client)] "
              "%[var(txn.model)] %[var(txn.priority)] %[var(txn.meter)] %HM %HU")
_LOG_FIELDS = LOG_FORMAT.count(" ")


def _number(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def parse_log(line: str) -> dict[str, object] | None:
    """A `request` event's fields from one access-log line, or None for HAProxy's other notices."""
    line = line.rstrip("\n")
    if not line.startswith(LOG_TAG + " "):
        return None
    parts = line.split(" ", _LOG_FIELDS)
    if len(parts) != _LOG_FIELDS + 1:
        return None
    (_, ident, t_in, client, port, status, bytes_out, bytes_in, t_req, t_queue, t_connect, t_resp, t_active, term,
     backend, server, who, model, priority, meter, method, uri) = parts
    path, _, query = uri.partition("?")
    return {
        "id": ident,
        "t_in_us": _number(t_in),
        "meter": meter if meter != "-" else None,
        "backend": backend,
        "server": server,
        "method": method,
        "path": path,
        "query": query or None,
        "status": _number(status),
        "client": client,
        "who": who if who != "-" else "unknown",
        "model": model if model != "-" else None,
        "priority": priority if priority != "-" else None,
        "client_port": _number(port),
        "bytes_out": _number(bytes_out),
        "bytes_in": _number(bytes_in),
        "forwarded": backend in ("engine", "generate", "any_node") or node_of(backend, server) is not None,
        "queue": backend == "generate",
        "node": node_of(backend, server),
        "termination": term,
        # Milliseconds, as HAProxy measures them: headers received, queue, connect to the
        # engine, engine's first response byte, and the whole exchange. -1: did not happen.
        "t_request_ms": _number(t_req),
        "t_queue_ms": _number(t_queue),
        "t_connect_ms": _number(t_connect),
        "t_response_ms": _number(t_resp),
        "t_total_ms": _number(t_active),
    }


def parse_start(line: str) -> dict[str, object] | None:
    """A start line (the metering filter's, when a generation takes an engine slot), or None."""
    parts = line.rstrip("\n").split(" ")
    if len(parts) != 9 or parts[0] != START_TAG:
        return None
    _, ident, t0, backend, server, who, model, priority, path = parts
    started = _number(t0)
    if started is None:
        return None
    return {"id": ident, "t0_us": started, "node": node_of(backend, server), "who": who if who != "-" else "unknown",
            "model": model if model != "-" else None, "priority": priority if priority != "-" else "normal", "path": path}
