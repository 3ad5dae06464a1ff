"""Time zones by name: an IANA name, or "local" (the machine's own), as `[usage] timezone`
takes them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

LOCALTIME = Path("/etc/localtime")


def zone(name: str, environ: Mapping[str, str] | None = None, localtime: Path = LOCALTIME) -> tzinfo:
    """The zone `[usage] timezone` names: an IANA name, or "local": $TZ when it names a zone,
    else the machine's /etc/localtime (macOS and Linux both keep it), else UTC. ValueError for
    a name that is not a zone."""
    if name != "local":
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{name!r} is not a time zone (an IANA name such as \"Europe/Paris\", or \"local\")") from None
    environ = os.environ if environ is None else environ
    tz = (environ.get("TZ") or "").lstrip(":")
    if tz:
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with localtime.open("rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        return UTC


def valid_zone(name: str) -> str | None:
    """Why `name` is not a usable `[usage] timezone`, or None."""
    try:
        zone(name)
    except ValueError as err:
        return str(err)
    return None
