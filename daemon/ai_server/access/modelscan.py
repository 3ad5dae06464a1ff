"""The model a request names, read exactly as the proxy's Lua reads it (haproxy/ai_server.lua):
its Python twin, for the policy model (policy.py). tests/unit/test_model_scan.py holds the two
to the same verdicts, and the Lua to Go's encoding/json, which Ollama decodes bodies with.

From a {model} path segment, and from the body's top-level "model" and "name" keys, compared
without case after unescaping (Go matches a key to a struct field that way and keeps the last
of two): `{"model":"a","MODEL":"b"}` names b to Ollama and a to a naive reader, so two
different names are refused, never guessed. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

OK, TWO, BAD, SLOW = "ok", "two", "bad", "slow"
_STRUCTURE = re.compile(rb'[{}\[\]"]')
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")
# A key longer than this cannot read "model" or "name" (a letter is at most a 6-byte \uXXXX),
# nor a longer value a model name (256 ASCII characters): neither is unescaped, as in the Lua.
MAX_KEY, MAX_VALUE = 30, 6 * 256
_HEX4 = re.compile(rb"[0-9A-Fa-f]{4}")
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:-]*")
_NAME = re.compile(r"[a-z0-9._:/-]+")
_ESCAPES = {ord('"'): b'"', ord("\\"): b"\\", ord("/"): b"/", ord("b"): b"\b", ord("f"): b"\f", ord("n"): b"\n",
            ord("r"): b"\r", ord("t"): b"\t"}


def _skip_ws(body: bytes, i: int) -> int | None:
    found = _NOT_SPACE.search(body, i)
    return found.start() if found else None


def _string_end(body: bytes, i: int) -> int | None:
    """The closing quote of the string opening at i: the next quote not escaped by an odd run
    of backslashes."""
    j = i + 1
    while True:
        q = body.find(b'"', j)
        if q < 0:
            return None
        k = q - 1
        while body[k] == 92:
            k -= 1
        if (q - 1 - k) % 2 == 0:
            return q
        j = q + 1


def _char(code: int) -> bytes:
    # Lua 5.3's utf8.char: any code point, surrogates included, as UTF-8-shaped bytes.
    if code < 0x80:
        return bytes([code])
    if code < 0x800:
        return bytes([0xC0 | code >> 6, 0x80 | code & 0x3F])
    if code < 0x10000:
        return bytes([0xE0 | code >> 12, 0x80 | code >> 6 & 0x3F, 0x80 | code & 0x3F])
    return bytes([0xF0 | code >> 18, 0x80 | code >> 12 & 0x3F, 0x80 | code >> 6 & 0x3F, 0x80 | code & 0x3F])


def unescape(raw: bytes) -> bytes | None:
    """A JSON string's content unescaped as Go does it (a lone surrogate: U+FFFD); None for a
    malformed escape."""
    out, i, n = [], 0, len(raw)
    while i < n:
        b = raw.find(b"\\", i)
        if b < 0:
            out.append(raw[i:])
            break
        out.append(raw[i:b])
        c = raw[b + 1] if b + 1 < n else -1
        if c == ord("u"):
            if not _HEX4.fullmatch(raw, b + 2, b + 6):
                return None
            code = int(raw[b + 2:b + 6], 16)
            i = b + 6
            if 0xD800 <= code <= 0xDFFF:
                low = int(raw[i + 2:i + 6], 16) if (code <= 0xDBFF and raw[i:i + 2] == b"\\u"
                                                    and _HEX4.fullmatch(raw, i + 2, i + 6)) else -1
                if 0xDC00 <= low <= 0xDFFF:
                    code = 0x10000 + (code - 0xD800) * 0x400 + (low - 0xDC00)
                    i += 6
                else:
                    code = 0xFFFD
            out.append(_char(code))
        elif c in _ESCAPES:
            out.append(_ESCAPES[c])
            i = b + 2
        else:
            return None
    return b"".join(out)


def _value(body: bytes, colon: int) -> tuple[bytes | None, int | None, str | None]:
    """The string value after a model key: (value, where to go on, problem)."""
    v = _skip_ws(body, colon + 1)
    if v is not None and body[v] == 34:
        end = _string_end(body, v)
        if end is None:
            return None, None, "the request body is not valid JSON"
        raw = body[v + 1:end] if end - v - 1 <= MAX_VALUE else b""
        value = unescape(raw) if b"\\" in raw else raw
        if value is None:
            return None, None, "the model name has a malformed escape"
        return value, end + 1, None
    if v is not None and body[v:v + 4] != b"null":
        return None, None, "the model must be a string"
    return None, None, None


def _add_kind(kinds: list[str | None], name: bytes | str, ollama: bool) -> bool:
    """`name` added to `kinds`, the distinct names so far as normalize compares them (None: no
    name), when it differs from the first: True once there are two, where the scan stops. At
    most two are kept, as in the Lua (every distinct name kept took its memory, finding F1)."""
    kind = normalize(name, ollama)
    if not kinds or kinds[0] != kind:
        kinds.append(kind)
    return len(kinds) > 1


def body_models(body: bytes, ollama: bool,
                kinds: list[str | None] | None = None) -> tuple[list[str | None] | None, str | None]:
    """The values of the body's top-level "model" and "name" keys, normalized, added to `kinds`
    (the path's names) until two differ, where the scan stops: (kinds, None), at most two, or
    (None, why not)."""
    kinds = [] if kinds is None else kinds
    first = _skip_ws(body, 0)
    if first is None or body[first] != 123 or len(kinds) > 1:
        return kinds, None
    depth, pos = 0, first
    while True:
        match = _STRUCTURE.search(body, pos)
        if match is None:
            return kinds, None
        s = match.start()
        c = body[s]
        if c == 34:
            end = _string_end(body, s)
            if end is None:
                return None, "the request body is not valid JSON"
            pos = end + 1
            colon = _skip_ws(body, pos) if depth == 1 and end - s - 1 <= MAX_KEY else None
            if colon is not None and body[colon] == 58:
                key = body[s + 1:end]
                if b"\\" in key:
                    key = unescape(key) or b""
                if key.lower() in (b"model", b"name"):
                    value, after, problem = _value(body, colon)
                    if problem:
                        return None, problem
                    if value is not None:
                        if _add_kind(kinds, value, ollama):
                            return kinds, None
                        pos = after or pos
        else:
            depth += 1 if c in (123, 91) else -1
            pos = s + 1


def normalize(name: bytes | str, ollama: bool) -> str | None:
    """Lower case, [a-z0-9._:/-]{1,256}, and for Ollama ":latest" when no tag; None otherwise."""
    raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogatepass")
    low = bytes(raw).lower()
    if not 0 < len(low) <= 256 or not _NAME.fullmatch(low.decode("latin-1")):
        return None
    text = low.decode("ascii")
    if ollama and ":" not in text.rsplit("/", 1)[-1]:
        text += ":latest"
    return text


def path_model(path: str, prefix: str, suffix: str) -> str | None:
    """The {model} segments of `path` for one rule's prefix and suffix, or None."""
    if len(path) <= len(prefix) + len(suffix) or not path.startswith(prefix) or not path.endswith(suffix):
        return None
    middle = path[len(prefix):len(path) - len(suffix)]
    segments = middle.split("/")
    if len(segments) > 4 or not all(_SEGMENT.fullmatch(s) for s in segments):
        return None
    return middle


def judge(path: str, body: bytes, rules: Sequence[tuple[str, str]], ollama: bool) -> tuple[str, str | None]:
    """(OK, model or None) | (TWO, None) | (BAD, why). `rules`: each {model} rule's path as
    (prefix, suffix). Two different names are TWO as soon as the second is read."""
    kinds: list[str | None] = []
    for p, s in rules:
        found = path_model(path, p, s)
        if found is not None and _add_kind(kinds, found, ollama):
            return TWO, None
    if body:
        scanned, problem = body_models(body, ollama, kinds)
        if scanned is None:
            return BAD, problem
    if not kinds:
        return OK, None
    if len(kinds) > 1:
        return TWO, None
    if kinds[0] is None:
        return BAD, "not a model name (letters, digits, . _ : / -)"
    return OK, kinds[0]
