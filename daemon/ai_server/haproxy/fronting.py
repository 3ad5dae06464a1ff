"""haproxy.cfg's sections for a front ([[node]]s): the nodes' health, a model backend per model
it routes, the routing itself, and the front's own engine as the node `local`.

Node names and addresses are the only configuration text that reaches these lines: names are
validated as [A-Za-z0-9._-] (config.py), addresses are parsed IPs and ports, written back
from the parsed values (NodeConfig.address), never as the user typed them.
"""

from __future__ import annotations

from ai_server.access.clients import FRONT
from ai_server.config import LOCAL_NODE
from ai_server.haproxy import maps, metering, names
from ai_server.haproxy.answers import refusal, shape_rules
from ai_server.haproxy.request import NAME_PATTERN
from ai_server.haproxy.spec import RenderInput

# A front's health check of its own engine, answered by its `local` frontend (never reachable
# from outside: that frontend listens on a unix socket only).
LOCAL_HEALTH_PATH = "/ai-server/local-health"
LOCAL_SOCKET = "local.sock"
# Retry-After when no node that has the model answers.
RETRY_AFTER_S = 5


def node_backends(spec: RenderInput) -> list[str]:
    cfg = spec.config
    states = dict(spec.node_states)
    slots = dict(spec.node_slots)
    local = cfg.engine.kind != "none"
    gone = refusal(503, "node", "no node that has this model answers", fields='"model":"%[var(txn.model)]"',
                   headers=(("Retry-After", str(RETRY_AFTER_S)),)).removeprefix("return status 503 ")
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
            f"    # {node.name} ({node.address}): its health. A node that stops answering is out within 2 s,",
            "    # back within a few once it answers again. Its proxy answering (even 403) means it",
            f"    # serves. The check says it comes from this front (X-Ai-Server-Client: {FRONT}), which",
            "    # the node believes only from its proxy.fronts.",
            "    option httpchk",
            f"    http-check send meth GET uri /v1/models ver HTTP/1.1 hdr Host {node.address} hdr X-Ai-Server-Client {FRONT}",
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
        *metering.meter_backend(spec),
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
        *metering.meter_backend(spec),
        *servers("any_node", backups=False),
    ]
    return lines


def node_routing(spec: RenderInput) -> list[str]:
    unknown = refusal(404, "node", "no node has this model",
                      fields=f'"model":"%[var(txn.model)]","models":%[str(list),map_str({maps.NODE_UNION},[])]')
    return [
        "    # Several machines behind this address ([[node]]): a request goes to a node that has",
        f"    # its model ({maps.NODE_MODELS}: model -> the backend of the nodes that have it,",
        "    # swapped in live by the supervisor as it reads what each node has). The model lists",
        "    # are the union across nodes, answered here.",
        "    http-request return status 200 content-type application/json "
        f"lf-string \"%[str(v1),map_str({maps.NODE_UNION},-)]\" "
        "if { path /v1/models } METH_GET",
        "    http-request return status 200 content-type application/json "
        f"lf-string \"%[str(tags),map_str({maps.NODE_UNION},-)]\" "
        "if { path /api/tags } METH_GET",
        f"    http-request set-var(txn.node_backend) var(txn.model),map_str({maps.NODE_MODELS}) "
        "if { var(txn.model) -m found }",
        f"    http-request {unknown} if {{ var(txn.model) -m found }} !{{ var(txn.node_backend) -m found }}",
        "    # Who is calling, for the node: it trusts this from its fronts only (proxy.fronts).",
        "    http-request set-header X-Ai-Server-Client %[var(txn.client)]",
        "    http-request set-header X-Ai-Server-Class %[var(txn.priority)]",
        "    use_backend %[var(txn.node_backend)] if { var(txn.node_backend) -m found }",
        "    # A request that names no model (/api/version, say): any node.",
        "    default_backend any_node",
    ]


def local_frontend(spec: RenderInput, routing: list[str]) -> list[str]:
    """The front's own engine as a node: `routing` to it, as on a single machine."""
    return [
        "frontend local",
        "    # This machine's own engine, as one of the nodes: the front has judged the request;",
        "    # here it waits for the engine like any local request.",
        f"    bind unix@{LOCAL_SOCKET} mode 600",
        "    no log",
        *shape_rules(),
        "    http-request set-var(txn.client) req.fhdr(x-ai-server-client) "
        f"if {{ req.fhdr(x-ai-server-client) -m reg {NAME_PATTERN} }}",
        "    http-request set-var(txn.priority) req.hdr(x-ai-server-class)",
        "    http-request del-header X-Ai-Server-Client",
        "    http-request del-header X-Ai-Server-Class",
        "    # The front's health check of this node: ready while the engine answers, and while a",
        "    # restart is under way (what arrives then waits here for it, as on a single machine).",
        f"    acl local_health path {LOCAL_HEALTH_PATH}",
        "    http-request return status 200 content-type text/plain string ready "
        f"if local_health {{ str(hold),map({maps.HOLD},0) -m str 1 }}",
        "    http-request set-var(txn.local_health) bool(1) if local_health",
        f"    http-request set-path {spec.engine_health_path} if local_health",
        "    use_backend engine if { var(txn.local_health) -m bool }",
        *routing,
    ]
