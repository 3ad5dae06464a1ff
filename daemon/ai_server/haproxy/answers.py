"""What the proxy answers itself: every refusal in haproxy.cfg is built here, by one helper, so
that their shape is one decision.

A refusal is in the error shape of the API it answers (interface.md, clients.toml), so that
each SDK's exception text shows why:

    /v1/messages*  Anthropic  {"type":"error","error":{"code","message","type"},...}
    other /v1/*    OpenAI     {"error":{"code","message","type","param"},...}
    anything else  Ollama     {"code","error","type",...}  (error is the message, a string)

and always names the client and the reason at the top level too. The message itself ends
with "(reason: R, client: C)": openai prints only error.message, the ollama client only error.

A refusal is one `return` action, so the shape cannot be chosen by more rules at the refusal:
its body is an lf-string whose few API-dependent fragments are variables that shape_rules()
sets from the path, first thing in each frontend that refuses. What differs between the
shapes is only where the error object opens and closes and what the message's key is, so one
template serves all three (members in another order than the APIs document, which JSON
readers do not mind).

Its text is ours: messages are fixed strings from the code, and the only values filled in at
request time are HAProxy expressions over validated variables (client names are plain names,
reasons fixed words).
"""

from __future__ import annotations

import re

# No quote of either kind (one would end the lf-string, the other a JSON string), no
# backslash, no control byte; JSON members (`fields`) have their double quotes.
_SAFE = re.compile(r"[^'\"\\\x00-\x1f\x7f]*")
_SAFE_FIELDS = re.compile(r"[^'\\\x00-\x1f\x7f]*")

# The error type both OpenAI and Anthropic clients expect for a status (Anthropic's names,
# which the openai SDK does not read: it picks its exception class by status).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               503: "overloaded_error"}

# The fragments per API: (where the error opens, the message's key, where it closes).
SHAPES = {
    "ollama": ("{", "error", ","),
    "openai": ('{"error":{', "message", ',"param":null},'),
    "anthropic": ('{"type":"error","error":{', "message", "},"),
}
_FRAGMENTS = ("txn.ais_open", "txn.ais_key", "txn.ais_close")


def shape_rules() -> list[str]:
    """Set the fragments for this request's API; must come before any refusal in a frontend."""
    conditions = {"ollama": "", "openai": " if { path_beg /v1/ }", "anthropic": " if { path_beg /v1/messages }"}
    lines = ["    # Refusals answer in the error shape of the API asked (haproxy/answers.py): its fragments."]
    for api, condition in conditions.items():
        fragments = zip(_FRAGMENTS, SHAPES[api], strict=True)
        lines += [f"    http-request set-var-fmt({var}) '{text}'{condition}" for var, text in fragments]
    return lines


def refusal(status: int, reason: str, message: str, *, client: bool = True, fields: str = "",
            headers: tuple[tuple[str, str], ...] = ()) -> str:
    """`return status ...` (an http-request action) with the JSON answer in this request's
    API's error shape (see the module's docstring), plus "client" (when known), "reason",
    "status" and `fields`.
    `client`: whether who is calling is known yet (rules before identity say nothing of it).
    `fields`: more JSON members, as lf-string text (e.g. `"queue":"generate"`)."""
    for text, pattern in ((reason, _SAFE), (message, _SAFE), (fields, _SAFE_FIELDS),
                          *((v, _SAFE) for pair in headers for v in pair)):
        if pattern.fullmatch(text) is None:
            raise ValueError(f"not fit for haproxy.cfg: {text!r}")
    who = ", client: %[var(txn.client)]" if client else ""
    shown = f"{message} (reason: {reason}{who})"
    kind = ERROR_TYPES.get(status, "api_error")
    open_, key, close = (f"%[var({var})]" for var in _FRAGMENTS)
    error = f'{open_}"code":"{reason}","{key}":"{shown}","type":"{kind}"{close}'
    member = '"client":"%[var(txn.client)]",' if client else ""
    extra = f",{fields}" if fields else ""
    body = f'{error}{member}"reason":"{reason}","status":{status}{extra}}}'
    hdrs = "".join(f' hdr {name} "{value}"' for name, value in headers)
    return f"return status {status} content-type application/json lf-string '{body}'{hdrs}"
