"""Find the line a TOML key stands on, so errors can name it.

tomllib gives values without positions; a small scan of the text is enough for the shapes our
files use: `[table]`, `[[array]]` and `key = value` lines.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_\-]+))\s*=""")


def line_of(text: str, table: str | None, key: str | None = None, index: int | None = None) -> int | None:
    """1-based line of `key` inside `[table]` (or the `index`-th `[[table]]`); the header's line when key is None."""
    seen = -1
    header_line: int | None = None
    inside = table is None
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header:
            name = header.group(2).replace('"', "").replace("'", "").strip()
            if header.group(1) == "[[" and name == table:
                seen += 1
            inside = name == table and (index is None or seen == index)
            if inside:
                header_line = number
                if key is None:
                    return number
            continue
        if inside and key is not None:
            match = _KEY.match(raw)
            if match and key in match.groups():
                return number
    return header_line
