"""haproxy/answers.py: each refusal body, filled in as HAProxy fills its lf-string for each
API's fragments, is that API's error shape and names the reason (the real SDKs' view of it is
tests/integration/test_refusal_shapes.py)."""

from __future__ import annotations

import json
import re

import pytest

from ai_server.haproxy import answers
from ai_server.haproxy.answers import SHAPES, refusal, shape_rules


def filled(action: str, api: str, client: str = "laptop") -> dict[str, object]:
    """The body HAProxy sends for `action` on a path of `api`."""
    body = re.search(r"lf-string '([^']*)'", action)
    assert body is not None
    values = dict(zip(("txn.ais_open", "txn.ais_key", "txn.ais_close"), SHAPES[api], strict=True), **{"txn.client": client})
    text = re.sub(r"%\[var\(([a-z_.]+)\)\]", lambda m: values[m.group(1)], body.group(1))
    answer: dict[str, object] = json.loads(text)
    return answer


def test_each_api_gets_its_own_error_shape_naming_the_reason_and_client() -> None:
    action = refusal(403, "model", "this model is not allowed for this client")
    message = "this model is not allowed for this client (reason: model, client: laptop)"
    assert filled(action, "openai") == {
        "error": {"code": "model", "message": message, "type": "permission_error", "param": None},
        "client": "laptop", "reason": "model", "status": 403}
    assert filled(action, "anthropic") == {
        "type": "error", "error": {"code": "model", "message": message, "type": "permission_error"},
        "client": "laptop", "reason": "model", "status": 403}
    assert filled(action, "ollama") == {"code": "model", "error": message, "type": "permission_error",
                                        "client": "laptop", "reason": "model", "status": 403}


def test_before_identity_no_client_and_fields_and_headers_follow() -> None:
    action = refusal(429, "rpm", "over", client=False, fields='"depth":%[var(txn.client)]', headers=(("Retry-After", "61"),))
    assert action.endswith(' hdr Retry-After "61"') and action.startswith("return status 429 ")
    assert filled(action, "openai", client="2") == {
        "error": {"code": "rpm", "message": "over (reason: rpm)", "type": "rate_limit_error", "param": None},
        "reason": "rpm", "status": 429, "depth": 2}
    assert filled(refusal(502, "x", "y"), "ollama")["type"] == "api_error"


def test_the_fragments_are_chosen_by_path_most_specific_last() -> None:
    rules = shape_rules()
    conditions = [r.split(" if ")[-1] for r in rules[1:] if " if " in r]
    assert conditions == ["{ path_beg /v1/ }"] * 3 + ["{ path_beg /v1/messages }"] * 3
    assert all("'" not in text for shape in SHAPES.values() for text in shape)  # each sits in '...'
    assert "%" not in "".join(text for shape in SHAPES.values() for text in shape)  # no log-format escape


@pytest.mark.parametrize("hostile", ["it's", 'say "hi"', "back\\slash", "new\nline", "nul\x00", "del\x7f"])
def test_text_unfit_for_haproxy_cfg_is_refused(hostile: str) -> None:
    for call in (lambda: refusal(403, hostile, "m"), lambda: refusal(403, "r", hostile),
                 lambda: refusal(403, "r", "m", headers=(("Retry-After", hostile),))):
        with pytest.raises(ValueError, match="not fit for haproxy.cfg"):
            call()
    assert answers.ERROR_TYPES[429] == "rate_limit_error"
