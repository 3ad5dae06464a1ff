"""follow_tailnet: a tailnet change applies the new view to the config in force, never
re-reading the files; a peer's self-reported HostName is no change at all."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from ai_server.access import tailnet
from ai_server.access.clients import Clients
from ai_server.access.tailscale import Peer
from ai_server.daemon import background
from ai_server.desired import Desired

MALLORY = Peer(("100.64.0.9",), "mallory", "mallory.tail1.ts.net", "", (), "nM1", "tail1.ts.net")


def test_a_hostname_only_change_is_not_a_tailnet_change() -> None:
    view = tailnet.Detection(peers=(MALLORY,), peers_known=True)
    renamed = replace(view, peers=(replace(MALLORY, host_name="bob-laptop"),))
    assert background.identity(view) == background.identity(renamed)
    moved = replace(view, peers=(replace(MALLORY, dns_name="bob.tail1.ts.net"),))
    assert background.identity(view) != background.identity(moved)


def test_a_tailnet_change_is_applied_without_reading_the_files(monkeypatch: pytest.MonkeyPatch) -> None:
    old = Desired(clients=Clients())
    new_view = tailnet.Detection(addresses=("100.64.0.1",), peers=(MALLORY,), peers_known=True)
    monkeypatch.setattr(background, "TAILNET_POLL_S", 0.0)
    monkeypatch.setattr(background.desired_mod, "with_tailnet", lambda d, _p: replace(d, tailnet_view=new_view))
    applied: list[tailnet.Detection] = []

    async def apply(view: tailnet.Detection, why: str) -> None:
        applied.append(view)
        raise asyncio.CancelledError  # one pass is enough

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(background.follow_tailnet(lambda: old, apply))
    assert applied == [new_view]
    # What it applies keeps the config in force, the files untouched.
    from ai_server import desired as desired_mod
    assert desired_mod.with_view(old, new_view).clients == old.clients
