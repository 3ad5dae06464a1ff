"""What every child is given when it is made, and never asks the supervisor for again.

Built once, before any child exists: where files live, the clock every deadline is measured
on (a fake one in tests), the environment children inherit, the daemon's mood (which every
start path reads), and the book of running processes each child keeps its own entry in.
What a child should run is not here: it is handed the Desired it applies, and keeps it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ai_server.base.paths import Paths
from ai_server.children.lifecycle import Clock
from ai_server.children.records import Book
from ai_server.children.states import DaemonMood


@dataclass(frozen=True)
class Context:
    paths: Paths
    clock: Clock = time.monotonic
    environ: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    mood: DaemonMood = field(default_factory=DaemonMood)
    records: Book = field(default_factory=lambda: Book(None))

    @staticmethod
    def of(paths: Paths, environ: Mapping[str, str], clock: Clock = time.monotonic) -> Context:
        """The daemon's own: the environment copied once (a later change to os.environ does not
        reach the children), the records in the state dir."""
        return Context(paths, clock, MappingProxyType(dict(environ)), DaemonMood(), Book(paths.children_file))
