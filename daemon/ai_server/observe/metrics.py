"""/metrics, in the Prometheus text format, served by the supervisor on `[metrics] listen`.

Counters and histograms (requests by client, route and code; durations, time to first byte and
queue waits) are counted from HAProxy's access log as it arrives. Gauges (children, the queue,
what is in flight, warm-ups, the loopback audit) are read when Prometheus scrapes, as are the
engine's own metrics where it has them (llama-server --metrics), renamed ai_server_engine_*
with the model as a label.

The access log is a file HAProxy appends to and the supervisor reads every 0.1 s: request
counters lag HAProxy's own by at most that read, and lose nothing;
ai_server_proxy_requests_total is HAProxy's count of every request, for comparison.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ai_server.children.proxy import Load
from ai_server.children.states import State
from ai_server.observe.records import ESTIMATED, Ended, Record
from ai_server.observe.snapshot import Snapshot

# Seconds: LLM requests run from milliseconds (a model list) to minutes (a long generation).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_PORT = 9464  # for listen = ["tailscale"]


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
        self.total += seconds
        self.count += 1


class Recorder:
    """What happens between scrapes: request records (a RecordBus subscriber), config reloads."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.duration: dict[str, Histogram] = {}
        self.first_byte: dict[str, Histogram] = {}
        self.queue_wait: dict[str, Histogram] = {}
        self.reloads: dict[str, int] = {"ok": 0, "error": 0}
        # Metered requests: tokens by client, model and direction; GPU-seconds; time to first token.
        self.tokens: dict[tuple[str, str, str], int] = {}
        self.gpu_seconds: dict[tuple[str, str], float] = {}
        self.first_token: dict[str, Histogram] = {}
        self.estimated: dict[tuple[str, str], int] = {}

    def record(self, record: Record) -> None:
        if not isinstance(record, Ended):
            return
        route = record.route
        key = (record.client, route, str(record.status), record.node or "")
        self.requests[key] = self.requests.get(key, 0) + 1
        total, response, queued = record.t_total_ms, record.t_response_ms, record.t_queue_ms
        if total is not None and total >= 0:
            self.duration.setdefault(route, Histogram()).observe(total / 1000)
        if response is not None and response >= 0:
            self.first_byte.setdefault(route, Histogram()).observe(response / 1000)
        if record.queued and queued is not None and queued >= 0:
            self.queue_wait.setdefault(record.priority or "normal", Histogram()).observe(queued / 1000)
        if record.metered:
            self._metered(record)

    def _metered(self, record: Ended) -> None:
        model = record.model or ""
        for direction, count in (("input", record.input_tokens), ("output", record.output_tokens)):
            key = (record.client, model, direction)
            self.tokens[key] = self.tokens.get(key, 0) + count
        self.gpu_seconds[(record.client, model)] = self.gpu_seconds.get((record.client, model), 0.0) + record.gpu_s
        if record.ttft_ms is not None:
            self.first_token.setdefault(model, Histogram()).observe(record.ttft_ms / 1000)
        if record.usage_source == ESTIMATED:
            self.estimated[(record.client, model)] = self.estimated.get((record.client, model), 0) + 1

    def reload(self, ok: bool) -> None:
        self.reloads["ok" if ok else "error"] += 1


@dataclass
class Live:
    """Read at scrape time."""
    children: list[tuple[str, bool, int]] = field(default_factory=list)   # name, up, restarts
    inflight: int = 0
    slots: int = 0
    queued: dict[str, int] = field(default_factory=dict)
    oldest_wait_s: float = 0.0
    clients_inflight: dict[str, int] = field(default_factory=dict)
    warm: list[tuple[str, str, float | None]] = field(default_factory=list)   # model, state, seconds
    audit_age_s: float | None = None
    proxy_requests: int | None = None
    engine: list[tuple[str, str, str, dict[str, str], float]] = field(default_factory=list)  # name, type, help, labels, value
    quotas: list[tuple[str, str, float]] = field(default_factory=list)    # client, quota, share used
    unrecorded: int = 0                                                   # metered, not in the ledger
    ledger_ok: bool = True
    log_dropped: int | None = None                                        # HAProxy's DroppedLogs


def live(snapshot: Snapshot, load: Load | None, engine: list[tuple[str, str, str, dict[str, str], float]]) -> Live:
    """The gauges of one scrape, from the daemon's snapshot, what HAProxy carries now (None
    when it does not answer) and the engine's own samples."""
    out = Live(children=[(c.name, c.state == State.RUNNING, c.restarts) for c in snapshot.children],
               slots=snapshot.slots, warm=[(w.model, w.state, w.seconds) for w in snapshot.warm],
               audit_age_s=snapshot.audit_age_s, engine=engine)
    if load is not None:
        out.inflight, out.queued, out.oldest_wait_s = load.inflight, load.queued, load.oldest_wait_s
        out.clients_inflight, out.proxy_requests = load.clients, load.requests_total
    if snapshot.usage is not None:
        usage = snapshot.usage
        out.quotas, out.unrecorded, out.ledger_ok = list(usage.quotas), usage.unrecorded, usage.problem is None
        out.log_dropped = usage.log_dropped
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.lines += [f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples]

    def histogram(self, name: str, help_text: str, label: str, series: dict[str, Histogram]) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for key, h in sorted(series.items()):
            for bound, count in zip(BUCKETS, h.counts, strict=True):
                self.lines.append(f"{name}_bucket{_labels({label: key, 'le': _number(bound)})} {count}")
            self.lines.append(f"{name}_bucket{_labels({label: key, 'le': '+Inf'})} {h.count}")
            self.lines.append(f"{name}_sum{_labels({label: key})} {_number(round(h.total, 6))}")
            self.lines.append(f"{name}_count{_labels({label: key})} {h.count}")


def render(recorder: Recorder, live: Live) -> str:
    """The exposition (pure)."""
    out = _Out()
    out.family("ai_server_child_up", "gauge", "1 when the child is RUNNING.",
               (({"name": n}, 1 if up else 0) for n, up, _ in live.children))
    out.family("ai_server_child_restarts_total", "counter", "Times the child was started again since ai-server started.",
               (({"name": n}, r) for n, _, r in live.children))
    out.family("ai_server_requests_total", "counter",
               "Requests answered, by client, route (allowlist rule), status code and node (when fronting [[node]]s).",
               (({"client": c, "route": r, "code": code, **({"node": n} if n else {})}, v)
                for (c, r, code, n), v in sorted(recorder.requests.items())))
    out.histogram("ai_server_request_duration_seconds", "Whole requests, by route.", "route", recorder.duration)
    out.histogram("ai_server_time_to_first_byte_seconds", "From the request to the engine's first response byte, by route.",
                  "route", recorder.first_byte)
    out.histogram("ai_server_queue_wait_seconds", "Time generation requests waited for an engine slot, by priority class.",
                  "class", recorder.queue_wait)
    out.family("ai_server_queue_depth", "gauge", "Generation requests waiting for an engine slot, by priority class.",
               (({"class": c}, n) for c, n in sorted(live.queued.items())))
    out.family("ai_server_queue_oldest_wait_seconds", "gauge", "How long the request waiting longest has waited.",
               [({}, live.oldest_wait_s)])
    out.family("ai_server_inflight", "gauge", "Generation requests the engine is running now.", [({}, live.inflight)])
    out.family("ai_server_engine_slots", "gauge", "Generation requests the engine runs at once (engine.parallel).",
               [({}, live.slots)])
    out.family("ai_server_client_inflight", "gauge", "Requests in progress (queued or running), by client.",
               (({"client": c}, n) for c, n in sorted(live.clients_inflight.items())))
    out.family("ai_server_config_reloads_total", "counter", "Config reloads, by result.",
               (({"result": r}, n) for r, n in sorted(recorder.reloads.items())))
    out.family("ai_server_warm_loaded", "gauge", "1 when the last warm-up of the model loaded it.",
               (({"model": m}, 1 if s == "loaded" else 0) for m, s, _ in live.warm))
    out.family("ai_server_warm_seconds", "gauge", "How long the last warm-up of the model took.",
               (({"model": m}, t) for m, _, t in live.warm if t is not None))
    if live.audit_age_s is not None:
        out.family("ai_server_audit_age_seconds", "gauge", "Seconds since the engine's sockets were last audited.",
                   [({}, round(live.audit_age_s, 3))])
    if live.proxy_requests is not None:
        out.family("ai_server_proxy_requests_total", "counter", "Every request HAProxy received (its own count).",
                   [({}, live.proxy_requests)])
    _usage(out, recorder, live)
    families: dict[str, tuple[str, str, list[tuple[dict[str, str], float]]]] = {}
    for name, kind, help_text, labels, value in live.engine:
        families.setdefault(name, (kind, help_text, []))[2].append((labels, value))
    for name, (kind, help_text, samples) in sorted(families.items()):
        out.family(name, kind, help_text, samples)
    return "\n".join(out.lines) + "\n"


def _usage(out: _Out, recorder: Recorder, live: Live) -> None:
    out.family("ai_server_tokens_total", "counter", "Tokens of metered requests, as the engine counted them (or estimated), "
               "by client, model and direction (input, output).",
               (({"client": c, "model": m, "direction": d}, n) for (c, m, d), n in sorted(recorder.tokens.items())))
    out.family("ai_server_gpu_seconds_total", "counter", "Seconds metered requests held an engine slot, by client and model.",
               (({"client": c, "model": m}, round(v, 6)) for (c, m), v in sorted(recorder.gpu_seconds.items())))
    out.family("ai_server_estimated_requests_total", "counter",
               "Metered requests whose tokens were estimated (the engine reported none, or nonsense).",
               (({"client": c, "model": m}, n) for (c, m), n in sorted(recorder.estimated.items())))
    out.histogram("ai_server_time_to_first_token_seconds",
                  "From the request to the first body bytes carrying a token, by model.", "model", recorder.first_token)
    out.family("ai_server_quota_used_ratio", "gauge", "Share of a quota used in its window (1 = all), by client and quota.",
               (({"client": c, "quota": q}, round(r, 6)) for c, q, r in live.quotas))
    out.family("ai_server_ledger_ok", "gauge", "1 when the usage ledger is being written.", [({}, 1 if live.ledger_ok else 0)])
    out.family("ai_server_ledger_unrecorded_requests", "gauge",
               "Metered requests read but not in the usage ledger (it could not be written).", [({}, live.unrecorded)])
    if live.log_dropped is not None:
        out.family("ai_server_log_dropped_total", "counter",
                   "Log lines HAProxy could not write (its DroppedLogs): requests missing from the request log.",
                   [({}, live.log_dropped)])


# -- the engine's own metrics ----------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_NAME = re.compile(r"[^a-zA-Z0-9_]")


def engine_samples(text: str, model: str) -> list[tuple[str, str, str, dict[str, str], float]]:
    """An engine's exposition (llama-server's llamacpp:* metrics), renamed ai_server_engine_*
    with the model as a label. Samples that already carry labels keep only the model label."""
    helps: dict[str, str] = {}
    kinds: dict[str, str] = {}
    out = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            parts = line.split(" ", 3)
            if len(parts) == 4:
                helps[parts[2]] = parts[3]
        elif line.startswith("# TYPE "):
            parts = line.split(" ")
            if len(parts) == 4:
                kinds[parts[2]] = parts[3]
        elif line and not line.startswith("#"):
            found = _SAMPLE.match(line.strip())
            if not found:
                continue
            raw, _, value = found.groups()
            try:
                number = float(value)
            except ValueError:
                continue
            short = _NAME.sub("_", raw.split(":", 1)[-1])
            kind = kinds.get(raw, "untyped")
            name = f"ai_server_engine_{short}"
            if kind == "counter" and not name.endswith("_total"):
                kind = "gauge"  # llama.cpp calls a few maxima counters; without _total they read as gauges
            out.append((name, kind if kind in ("counter", "gauge") else "untyped",
                        helps.get(raw, "From the engine.").replace("\n", " "), {"model": model}, number))
    return out


# -- where it is served ------------------------------------------------------------------------------


def addresses(listen: tuple[str, ...], tailnet: tuple[str, ...]) -> list[tuple[str, int]]:
    """Where /metrics is served: each "ADDRESS:PORT" of [metrics] listen, and "tailscale" as
    every tailnet address on DEFAULT_PORT."""
    wanted: list[tuple[str, int]] = []
    for item in listen:
        if item == "tailscale":
            wanted += [(a, DEFAULT_PORT) for a in tailnet]
        else:
            host, _, port = item.rpartition(":")
            wanted.append((host.strip("[]"), int(port)))
    return list(dict.fromkeys(wanted))
