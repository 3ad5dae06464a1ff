"""Several machines behind one address: what each [[node]] has, and where a model goes.

The supervisor reads each node's models through that node's own allowlisted endpoints
(/v1/models; /api/tags and /api/ps where the node runs Ollama, /api/ps for what is loaded) at
start, every 5 s and on `reload`, and hands HAProxy the result through its runtime API, without
a reload: which backend serves which model (node-models.map), and in each such backend which
node's servers are ready. HAProxy does the balancing itself: a backend per model slot, one
server per node that has the model (a backup server when it has it but not loaded), balance
leastconn, maxconn from each node's slots, health checks that take a silent node out.

Everything here but `discover` is pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ai_server.haproxy.names import MODEL_BACKENDS, backup_name

POLL_S = 5.0
_MODEL = re.compile(r"[a-z0-9._:/-]{1,256}")


@dataclass
class NodeState:
    name: str
    models: dict[str, bool] = field(default_factory=dict)   # model (lower case) -> loaded
    listed: dict[str, str] = field(default_factory=dict)    # model -> the name as the node spells it
    slots: int = 4
    ollama: bool = False
    last_error: str | None = None
    drained: bool = False


def model_keys(name: str, ollama: bool) -> list[str]:
    """The names a request may use for a node's model: lower case, and for Ollama also without
    its implicit ":latest"."""
    low = name.lower()
    keys = [low]
    if ollama and low.endswith(":latest"):
        keys.append(low[: -len(":latest")])
    return [k for k in keys if _MODEL.fullmatch(k)]


async def discover(client: httpx.AsyncClient, state: NodeState, slots: int | None = None) -> None:
    """Refresh `state` from the node (a front's [[node]], or the local engine). A failure keeps
    the last models known: health checks decide whether the node serves."""
    try:
        listed = await client.get("/v1/models")
        listed.raise_for_status()
        names = [str(m["id"]) for m in listed.json().get("data", []) if isinstance(m, dict) and "id" in m]
        header = listed.headers.get("X-Ai-Server-Slots", "")
        state.slots = slots or (int(header) if header.isdigit() and int(header) > 0 else state.slots)
        tags = await client.get("/api/tags")
        state.ollama = tags.status_code == 200 and "models" in _json(tags)
        if state.ollama:
            names += [str(m.get("name")) for m in _json(tags).get("models", []) if isinstance(m, dict)]
        loaded: set[str] = set()
        ps = await client.get("/api/ps")
        if ps.status_code == 200 and isinstance(_json(ps).get("models"), list):
            loaded = {str(m.get("name", "")).lower() for m in _json(ps)["models"] if isinstance(m, dict)}
        else:
            # llama-server's router says what it has loaded in /models.
            router = await client.get("/models")
            if router.status_code == 200:
                loaded = {str(m.get("id", "")).lower() for m in _json(router).get("data", [])
                          if isinstance(m, dict) and (m.get("status") or {}).get("value") == "loaded"}
        models: dict[str, bool] = {}
        spelled: dict[str, str] = {}
        for name in names:
            for key in model_keys(name, state.ollama):
                models[key] = models.get(key, False) or name.lower() in loaded
                spelled.setdefault(key, name)
        state.models, state.listed, state.last_error = models, spelled, None
    except (httpx.HTTPError, ValueError) as err:
        state.last_error = f"{type(err).__name__}: {err}"[:300]


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def fair_selection(holders: Mapping[str, Mapping[str, bool]], keep: Iterable[str], capacity: int) -> list[str]:
    """The models to route when there is room for `capacity`: node by node in turn, each
    taking its next model not yet chosen (those already routed first, then loaded ones, then
    by name), so a node advertising many names gets its share and no more. A node's share is
    never cut below capacity / nodes by another's. Pure."""
    kept = set(keep)
    queues = {node: sorted(models, key=lambda m: (m not in kept, not models[m], m)) for node, models in holders.items()}
    chosen: dict[str, None] = {}
    while len(chosen) < capacity and any(queues.values()):
        for node in sorted(queues):
            queue = queues[node]
            while queue and queue[0] in chosen:
                queue.pop(0)
            if queue and len(chosen) < capacity:
                chosen[queue.pop(0)] = None
    return list(chosen)


def assign(previous: dict[str, str], holders: Mapping[str, Mapping[str, bool]], capacity: int = MODEL_BACKENDS
           ) -> dict[str, str]:
    """model -> backend (m0 ...), for the models fair_selection routes, keeping every model
    that stays where it was, so a request in flight is never counted in one backend and
    finished in another. `holders`: each node's models (model -> loaded)."""
    wanted = fair_selection(holders, previous, capacity)
    kept = {m: b for m, b in previous.items() if m in wanted}
    free = [f"m{i}" for i in range(capacity) if f"m{i}" not in kept.values()]
    for model in sorted(wanted):
        if model not in kept and free:
            kept[model] = free.pop(0)
    return kept


def server_states(assignment: dict[str, str], states: Iterable[NodeState], capacity: int = MODEL_BACKENDS
                  ) -> dict[tuple[str, str], str]:
    """(backend, server) -> "ready" | "drain", for every server of every model backend.
    A node's primary server is ready where it has the model loaded; its backup where it has it
    but not loaded (HAProxy uses backups only when no primary is usable). Every other server
    drains: what is in flight finishes, nothing new starts. Never "maint": with
    shutdown-sessions, maint would cut the very request whose model just loaded."""
    by_backend = {b: m for m, b in assignment.items()}
    out: dict[tuple[str, str], str] = {}
    for node in states:
        ready = "drain" if node.drained else "ready"
        for i in range(capacity):
            backend = f"m{i}"
            model = by_backend.get(backend)
            has = model is not None and model in node.models
            loaded = has and node.models[model or ""]
            out[(backend, node.name)] = ready if loaded else "drain"
            out[(backend, backup_name(node.name))] = ready if has and not loaded else "drain"
    return out


def union(states: Iterable[NodeState]) -> dict[str, str]:
    """The front's own answers, compact JSON: /v1/models ("v1"), /api/tags ("tags"), and the
    list a 404 for an unknown model shows ("list")."""
    names: dict[str, str] = {}
    for node in states:
        for key, spelled in node.listed.items():
            if key == spelled.lower():  # (keys are checked names: so is this spelling)
                names.setdefault(key, spelled)
    ordered = sorted(names.values(), key=str.lower)
    v1 = {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "ai-server"} for n in ordered]}
    tags = {"models": [{"name": n, "model": n} for n in ordered]}
    compact = (",", ":")
    return {"v1": json.dumps(v1, separators=compact), "tags": json.dumps(tags, separators=compact),
            "list": json.dumps(ordered, separators=compact)}
