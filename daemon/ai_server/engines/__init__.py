"""Engines behind one small interface (base.Engine): how to run one, whether it answers, what
it serves. Each kind lives in its own module. The supervisor only ever talks to `Engine`.
"""

from __future__ import annotations

from ai_server.engines import llama_server, none, ollama
from ai_server.engines.base import Engine, Progress

__all__ = ["Engine", "Progress", "engine_for"]


def engine_for(kind: str) -> Engine:
    engines: dict[str, Engine] = {"ollama": ollama.Ollama(), "llama-server": llama_server.LlamaServer(),
                                  "none": none.NoEngine()}
    return engines[kind]
