"""allowlist: every rule is forwarded; model management is refused with exactly the proxy's 403.

remote-ollama-proxy's test.sh accepted 404 for a blocked endpoint, which an engine answers too; here the
refusal must be the proxy's own (403, naming the allowlist).
"""

from __future__ import annotations

from collections.abc import Iterable

from ai_server.access import allowlist
from ai_server.check.registry import Check, Context, check, expect, factory, needs_proxy

BLOCKED = (("POST", "/api/pull"), ("DELETE", "/api/delete"), ("POST", "/api/create"),
           ("POST", "/api/push"), ("POST", "/api/copy"))


@factory
def forwarded(ctx: Context) -> Iterable[Check]:
    for rule in allowlist.read(ctx.paths.config_dir).rules:
        method = rule.methods[0]

        def test(ctx: Context, method: str = method, rule_path: str = rule.path) -> str:
            path = rule_path.replace(allowlist.MODEL_PLACEHOLDER, ctx.model or "x")
            response = ctx.client.request(method, ctx.proxy_url + path, json={} if method != "GET" else None)
            expect(response.status_code not in (403, 405), f"{method} {path} answered {response.status_code}")
            return f"{response.status_code} from the engine"

        yield Check("allowlist", f"{method} {rule.path} forwarded", test, (needs_proxy,))


@factory
def blocked(ctx: Context) -> Iterable[Check]:
    for method, path in BLOCKED:
        def test(ctx: Context, method: str = method, path: str = path) -> str:
            response = ctx.client.request(method, ctx.proxy_url + path, json={})
            expect(response.status_code == 403, f"answered {response.status_code}, not 403")
            expect("allowlist" in response.text, "the 403 did not come from the proxy")
            return "403"

        yield Check("allowlist", f"{method} {path} refused with 403", test, (needs_proxy,))


@check("allowlist", "encoded traversal refused", needs_proxy)
def traversal(ctx: Context) -> str:
    response = ctx.client.get(ctx.proxy_url + "/v1/models/..%2f..%2fapi%2fpull")
    expect(response.status_code == 403, f"answered {response.status_code}")
    return "403"
