"""llama-server's /v1/models as the proxy answers it: no command lines, and a map value no
model name can bend."""

from __future__ import annotations

import json

from ai_server.engines.model_list import map_value, public
from ai_server.haproxy import maps

# What llama-server's router answers (trimmed), for a model file somebody named with intent.
LISTED = {"object": "list", "data": [{
    "id": "evil #x; y\n\"z\u2028é", "aliases": ["a b", 7], "tags": [], "object": "model", "owned_by": "llamacpp",
    "created": 1796282439, "source": "models_dir", "can_remove": False,
    "status": {"value": "loaded", "args": ["/home/ada/.venv/bin/llama-server", "--port", "36511", "--model",
                                           "/home/ada/models/evil.gguf"],
               "preset": "[evil]\nmodel = /home/ada/models/evil.gguf\n"},
    "meta": {"n_params": 134515008}, "architecture": {"input_modalities": ["text"]}},
    {"object": "model"}, "not a model"]}


def test_only_the_public_fields_are_kept() -> None:
    clean = public(LISTED)
    assert clean == {"object": "list", "data": [{
        "id": "evil #x; y\n\"z\u2028é", "object": "model", "created": 1796282439, "owned_by": "llamacpp",
        "aliases": ["a b"], "tags": [], "status": {"value": "loaded"}}]}
    text = json.dumps(clean)
    assert "/home/ada" not in text and "36511" not in text and "args" not in text and "preset" not in text


def test_the_map_value_is_one_safe_line_that_means_the_same() -> None:
    value = map_value(public(LISTED))
    maps.check_entry("v1", value)  # raises MapLineError on a byte that could bend the map
    assert not set(value) & {" ", ";", "#", "\n", "\r"} and value.isascii()
    assert json.loads(value) == public(LISTED)
    assert maps.engine_models_map(value).text().splitlines()[1] == f"v1 {value}"


def test_nothing_listed_is_an_empty_list() -> None:
    assert public({"error": "x"}) == {"object": "list", "data": []}
    assert public(["x"]) == {"object": "list", "data": []}
    assert maps.engine_models_map(None).entries == ()
