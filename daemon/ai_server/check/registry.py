"""The checks' framework: Fail and Skip, the shared Context, registration and preconditions.

Each check is a small function registered under its group (service, isolation, allowlist,
openai, anthropic, performance). It returns a detail line, or raises Fail or Skip; verdicts
never rest on `assert`, so `python -O` cannot turn a failure into a pass. An unexpected error
inside one check is that check's FAIL, with the error; the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ai_server.base.paths import Paths
from ai_server.install.system import System


class Fail(Exception):
    """The check found what it guards against; the message says what."""


class Skip(Exception):
    """The check does not apply here; the message says why."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise Fail(message)


@dataclass
class Result:
    group: str
    name: str
    outcome: str   # PASS, FAIL, SKIP
    detail: str = ""


@dataclass
class Context:
    """What the checks share: the installation's paths, the supervisor's status, options."""
    paths: Paths
    system: System
    model: str | None = None
    skip_model: bool = False
    skip_anthropic: bool = False
    status: dict[str, Any] | None = None
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=120))
    model_problem: str | None = None  # why model checks skip, once known

    @property
    def proxied(self) -> bool:
        return bool(self.status and self.status["proxy"].get("enabled", True))

    def child(self, role: str) -> dict[str, Any]:
        """The proxy (role "haproxy") or the engine (role "engine") in the status."""
        if self.status is None:
            raise Skip("no status from the supervisor")
        for child in self.status["children"]:
            if child["name"] == role or (role == "engine" and child["name"] != "haproxy"):
                found: dict[str, Any] = child
                return found
        if role == "engine" and self.status["proxy"].get("nodes") and not self.status["proxy"].get("engine_listen"):
            raise Skip("this machine only fronts [[node]]s (engine.kind = \"none\"): run `ai-server check` on each node")
        raise Fail(f"no {role} child in the supervisor's status")

    @property
    def proxy_url(self) -> str:
        listen = (self.status or {}).get("proxy", {}).get("listen") or []
        if not listen:
            raise Skip("the proxy listens nowhere yet")
        return f"http://{listen[0]}"

    @property
    def engine_url(self) -> str:
        listen = (self.status or {}).get("proxy", {}).get("engine_listen")
        if not listen:
            self.child("engine")  # a front without an engine: says so
            raise Skip("the engine listens nowhere yet")
        return f"http://{listen}"

    @property
    def base(self) -> str:
        """Where clients send API requests: the proxy, or the engine when there is none."""
        return self.proxy_url if self.proxied else self.engine_url


# A check's precondition: None when it applies, else why it is skipped.
Needs = Callable[[Context], str | None]
Test = Callable[[Context], str | None]


@dataclass(frozen=True)
class Check:
    group: str
    name: str
    test: Test
    needs: tuple[Needs, ...] = ()


# The groups' modules, in the order their checks run: the service first (it reads the status
# the others need), the APIs' model chosen before the API checks. Within a module, checks run
# in the order they are written. A factory adds checks that depend on the installation (one
# per allowlist rule, say) when the run reaches it.
ORDER = ("service", "isolation", "allowlist", "apis", "performance")
_REGISTRY: list[Check | Callable[[Context], Iterable[Check]]] = []


def registered() -> list[Check | Callable[[Context], Iterable[Check]]]:
    def module(entry: Check | Callable[[Context], Iterable[Check]]) -> str:
        owner = entry.test if isinstance(entry, Check) else entry
        return owner.__module__.rpartition(".")[2]
    return sorted(_REGISTRY, key=lambda entry: ORDER.index(module(entry)))


def check(group: str, name: str, *needs: Needs) -> Callable[[Test], Test]:
    def register(test: Test) -> Test:
        _REGISTRY.append(Check(group, name, test, needs))
        return test
    return register


def factory(make: Callable[[Context], Iterable[Check]]) -> Callable[[Context], Iterable[Check]]:
    _REGISTRY.append(make)
    return make


# -- preconditions shared by the groups ------------------------------------------------------------

def needs_status(ctx: Context) -> str | None:
    return None if ctx.status is not None else "the supervisor did not answer"


def needs_proxy(ctx: Context) -> str | None:
    return needs_status(ctx) or (None if ctx.proxied else "the proxy is disabled (declined at install)")


def needs_model(ctx: Context) -> str | None:
    return needs_status(ctx) or ctx.model_problem


def needs_anthropic(ctx: Context) -> str | None:
    return needs_model(ctx) or ("--skip-anthropic-tests" if ctx.skip_anthropic else None)
