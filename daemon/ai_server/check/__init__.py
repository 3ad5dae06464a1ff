"""`ai-server check`: remote-ollama-proxy's test.sh, as a verification of a live installation.

Each check is a small function registered under its group (service, isolation, allowlist,
openai, anthropic, performance). It returns a detail line, or raises Fail or Skip; verdicts
never rest on `assert`, so `python -O` cannot turn a failure into a pass. An unexpected error
inside one check is that check's FAIL, with the error; the run goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict

from ai_server.check import allowlist, apis, isolation, performance, service  # noqa: F401 (registers them)
from ai_server.check.registry import Check, Context, Fail, Result, Skip, expect, registered

__all__ = ["Check", "Context", "Fail", "Result", "Skip", "as_json", "expect", "render_table", "run", "run_one"]


# -- running ---------------------------------------------------------------------------------------

def run_one(ctx: Context, item: Check) -> Result:
    for need in item.needs:
        reason = need(ctx)
        if reason:
            return Result(item.group, item.name, "SKIP", reason)
    try:
        return Result(item.group, item.name, "PASS", item.test(ctx) or "")
    except Skip as why:
        return Result(item.group, item.name, "SKIP", str(why))
    except Fail as why:
        return Result(item.group, item.name, "FAIL", str(why) or "failed")
    except Exception as err:  # one broken check is that check's FAIL, never the end of the run
        return Result(item.group, item.name, "FAIL", f"unexpected {type(err).__name__}: {err}")


def run(ctx: Context) -> list[Result]:
    results = []
    for entry in registered():
        items = [entry] if isinstance(entry, Check) else _expand(ctx, entry)
        for item in items:
            results.append(run_one(ctx, item))
    return results


def _expand(ctx: Context, make: Callable[[Context], Iterable[Check]]) -> list[Check]:
    try:
        return list(make(ctx))
    except Skip:
        return []
    except Exception as err:
        problem = f"could not list them: unexpected {type(err).__name__}: {err}"

        def broken(ctx: Context) -> str:
            raise Fail(problem)

        return [Check("check", getattr(make, "__name__", "checks"), broken)]


def render_table(results: list[Result]) -> str:
    width = max((len(r.name) for r in results), default=5)
    lines = [f"{'':<11} {'CHECK':<{width}}  RESULT  DETAIL"]
    for r in results:
        lines.append(f"{r.group:<11} {r.name:<{width}}  {r.outcome:<6}  {r.detail}")
    counts = {o: sum(r.outcome == o for r in results) for o in ("PASS", "FAIL", "SKIP")}
    lines.append(f"\n{len(results)} checks: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return "\n".join(lines)


def as_json(results: list[Result]) -> str:
    return json.dumps({"checks": [asdict(r) for r in results],
                       "passed": sum(r.outcome == "PASS" for r in results),
                       "failed": sum(r.outcome == "FAIL" for r in results),
                       "skipped": sum(r.outcome == "SKIP" for r in results)}, indent=2)
