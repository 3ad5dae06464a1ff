"""llama-server's /v1/models, as clients may see it.

In router mode llama-server lists each model with the command line it runs it with (`status.args`,
`status.preset`): the binary's and the model's paths under the owner's home, the port of a
loopback child. The proxy does not forward that answer: it answers /v1/models itself from a map
the supervisor fills with this module's clean list (read every few seconds and after each engine
start), so serving it costs the proxy a map lookup, and no other request anything.

Kept per model: what the OpenAI API defines (id, object, created, owned_by) and llama-server's
own names and state (aliases, tags, status.value). Everything else is dropped, so a field a
future llama-server adds is not shown until someone decides it is safe.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

READ_TIMEOUT = httpx.Timeout(3.0)
_KEPT = ("id", "object", "created", "owned_by")
_NAME_LISTS = ("aliases", "tags")


def public(listed: Any) -> dict[str, Any]:
    """The clean list: {"object": "list", "data": [...]} with only the fields above. Pure."""
    models = listed.get("data") if isinstance(listed, dict) else None
    out = []
    for model in models if isinstance(models, list) else []:
        if not isinstance(model, dict) or not isinstance(model.get("id"), str):
            continue
        entry = {k: model[k] for k in _KEPT if isinstance(model.get(k), (str, int)) and not isinstance(model.get(k), bool)}
        for key in _NAME_LISTS:
            if isinstance(model.get(key), list):
                entry[key] = [n for n in model[key] if isinstance(n, str)]
        status = model.get("status")
        if isinstance(status, dict) and isinstance(status.get("value"), str):
            entry["status"] = {"value": status["value"]}
        out.append(entry)
    return {"object": "list", "data": out}


def map_value(answer: dict[str, Any]) -> str:
    """`answer` as one map value: compact JSON, ASCII only, and no space, ';' or '#' (which
    would end a map key, a runtime command, or start a comment). Those three can only occur
    inside JSON strings, where their \\u escapes mean the same."""
    text = json.dumps(answer, separators=(",", ":"), ensure_ascii=True)
    return text.replace(" ", "\\u0020").replace(";", "\\u003b").replace("#", "\\u0023")


async def read(client: httpx.AsyncClient) -> str:
    """The engine's list, cleaned, as a map value. httpx.HTTPError or ValueError when the
    engine does not answer with a list."""
    response = await client.get("/v1/models", timeout=READ_TIMEOUT)
    response.raise_for_status()
    return map_value(public(response.json()))
