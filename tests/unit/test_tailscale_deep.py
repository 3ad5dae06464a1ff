"""A `tailscale status` nested deeper than Python parses is a failing CLI, not a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_server.access import tailscale


def test_deeply_nested_status_is_unavailable(tmp_path: Path) -> None:
    cli = tmp_path / "tailscale"
    cli.write_text("#!/bin/sh\nprintf '%*s' 100000 '' | tr ' ' '['\n")
    cli.chmod(0o755)
    with pytest.raises(tailscale.Unavailable, match="gave something else"):
        tailscale.status(str(cli))
