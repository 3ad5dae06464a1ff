"""The names haproxy.cfg gives a front's routing: its model backends (m0 .. m63) and each
node's servers in them. The supervisor reads them back from the runtime API and the access log."""

from __future__ import annotations

import re

MODEL_BACKENDS = 64          # models the front can route at once (m0 .. m63)


def backup_name(node: str) -> str:
    """A node's backup server in a model backend. Node names have no ":", so this never
    collides with another node's name (as "a_b" would with node "a"'s "_b")."""
    return node + ":backup"


def node_of(backend: str, server: str) -> str | None:
    """The node a request went to, from the backend and server HAProxy logged."""
    if backend == "any_node" or re.fullmatch(r"m\d+", backend):
        return server.removesuffix(":backup")
    return None
