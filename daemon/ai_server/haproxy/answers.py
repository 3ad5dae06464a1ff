"""What the proxy answers itself: every refusal in haproxy.cfg is built here, by one helper, so
that their shape is one decision (and can become each API's own error shape in one place).

A refusal is a short JSON body naming the reason (policy.decide's reason) and, once it is
known, the client. Its text is ours: messages are fixed strings from the code, and the only
values filled in at request time are HAProxy expressions over validated variables (client
names are plain names, reasons fixed words).
"""

from __future__ import annotations

import re

# No quote of either kind (one would end the lf-string, the other a JSON string), no
# backslash, no control byte; JSON members (`fields`) have their double quotes.
_SAFE = re.compile(r"[^'\"\\\x00-\x1f\x7f]*")
_SAFE_FIELDS = re.compile(r"[^'\\\x00-\x1f\x7f]*")


def refusal(status: int, reason: str, message: str, *, client: bool = True, fields: str = "",
            headers: tuple[tuple[str, str], ...] = ()) -> str:
    """`return status ...` (an http-request action) with the JSON answer:
    {"error": message, "client": <who>, "reason": reason, "status": status, ...fields}.
    `client`: whether who is calling is known yet (rules before identity say nothing of it).
    `fields`: more JSON members, as lf-string text (e.g. `"queue":"generate"`)."""
    for text, pattern in ((reason, _SAFE), (message, _SAFE), (fields, _SAFE_FIELDS),
                          *((v, _SAFE) for pair in headers for v in pair)):
        if pattern.fullmatch(text) is None:
            raise ValueError(f"not fit for haproxy.cfg: {text!r}")
    who = ',"client":"%[var(txn.client)]"' if client else ""
    extra = f",{fields}" if fields else ""
    body = f'{{"error":"{message}"{who},"reason":"{reason}","status":{status}{extra}}}'
    hdrs = "".join(f' hdr {name} "{value}"' for name, value in headers)
    return f"return status {status} content-type application/json lf-string '{body}'{hdrs}"
