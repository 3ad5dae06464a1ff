"""The check framework: explicit verdicts, and one broken check never ends the run."""

from __future__ import annotations

from pathlib import Path

from ai_server.base.paths import Paths
from ai_server.check import Check, Context, Fail, Skip, expect, run_one
from ai_server.install.system import System


def context() -> Context:
    return Context(Paths(Path("/nonexistent"), Path("/nonexistent"), Path("/nonexistent")), System())


def test_outcomes() -> None:
    def passes(ctx: Context) -> str:
        return "fine"

    def fails(ctx: Context) -> str:
        expect(1 == 2, "one is not two")
        return "unreachable"

    def skips(ctx: Context) -> str:
        raise Skip("not here")

    def breaks(ctx: Context) -> str:
        return [][1]

    ctx = context()
    assert run_one(ctx, Check("g", "a", passes)).outcome == "PASS"
    failed = run_one(ctx, Check("g", "b", fails))
    assert (failed.outcome, failed.detail) == ("FAIL", "one is not two")
    assert run_one(ctx, Check("g", "c", skips)).outcome == "SKIP"
    broken = run_one(ctx, Check("g", "d", breaks))
    assert broken.outcome == "FAIL" and broken.detail.startswith("unexpected IndexError")
    assert run_one(ctx, Check("g", "e", passes, (lambda c: "no engine",))).detail == "no engine"


def test_expect_does_not_rely_on_assert() -> None:
    import ai_server.check as check_module
    from ai_server.check import allowlist, apis, isolation, performance, service
    for module in (check_module, allowlist, apis, isolation, performance, service):
        source = Path(module.__file__).read_text()
        assert "\n    assert " not in source and "\n        assert " not in source, module.__name__
    try:
        expect(False, "no")
    except Fail as err:
        assert str(err) == "no"
