"""What haproxy.cfg is rendered from (RenderInput), and the small helpers every section uses."""

from __future__ import annotations

from dataclasses import dataclass

from ai_server.base.netaddr import parse_ip
from ai_server.config import Config

# Requests that make the engine generate, embed or rerank: they wait for one of its slots.
# Ollama's (native, OpenAI and Anthropic layers) and llama-server's own routes (its legacy and
# OpenAI-style ones, infill, rerank, transcription). Everything else (model lists, versions,
# details, tokenize) is cheap and never waits behind them.
GENERATION_PATHS = ("/v1/chat/completions /v1/completions /v1/messages /v1/responses /v1/embeddings "
                    "/api/chat /api/generate /api/embed /api/embeddings "
                    "/completion /completions /chat/completions /responses /infill /embedding /embeddings "
                    "/rerank /reranking /v1/rerank /v1/reranking /v1/audio/transcriptions /audio/transcriptions")


@dataclass(frozen=True)
class RenderInput:
    config: Config
    addresses: tuple[str, ...]
    engine_health_path: str = "/"
    # HAProxy built with Lua (Debian's and Homebrew's are): requests can be held while the
    # engine restarts, and the model a body names read. Without it they get 503 for the few
    # seconds a restart takes, and model-restricted clients are refused.
    lua: bool = True
    # HTTPS with tls.pem (the MagicDNS certificate, proxy.tls = "tailscale").
    tls: bool = False
    # Fronting [[node]]s: each model backend's servers, as the supervisor last set them
    # ("ready", "drain"), so a reload starts where the running proxy was; and each
    # node's slots.
    node_states: tuple[tuple[tuple[str, str], str], ...] = ()
    node_slots: tuple[tuple[str, int], ...] = ()
    # The descriptor the supervisor passes HAProxy the request log on (metering.SPOOL, opened
    # O_APPEND): HAProxy inherits it at the same number.
    log_fd: int = 3


def bind_address(address: str, port: int) -> str:
    ip = parse_ip(address)
    return f"ipv{ip.version}@{ip}:{port}"


def ms(seconds: float) -> str:
    return f"{int(round(seconds * 1000))}ms"
