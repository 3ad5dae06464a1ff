"""Named sets of allowlist rules for the APIs clients speak: `ai-server allow preset NAME`.

A preset only adds rules (merging methods into rules already there), through the same
validation as `allow add`, so it can never open model management: the tests check every
preset's rules against allowlist.check_rule_path and the management probes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ai_server.access import allowlist
from ai_server.base.errors import AiServerError


@dataclass(frozen=True)
class PresetRule:
    path: str
    methods: tuple[str, ...]
    what: str          # the comment the rule gets in allowlist.toml


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    rules: tuple[PresetRule, ...]


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("openai", "the OpenAI API: the openai SDKs, aider, llm, Continue, Open WebUI's OpenAI connection", (
        PresetRule("/v1/chat/completions", ("POST",), "chat, streaming or not, JSON mode, tool calls"),
        PresetRule("/v1/completions", ("POST",), "legacy completions (Continue's autocomplete)"),
        PresetRule("/v1/models", ("GET",), "list the models"),
        PresetRule("/v1/models/{model}", ("GET",), "one model's details"),
        PresetRule("/v1/responses", ("POST",), "the Responses API"),
    )),
    Preset("anthropic", "the Anthropic API: the anthropic SDKs, Claude Code", (
        PresetRule("/v1/messages", ("POST",), "messages, streaming via server-sent events"),
        PresetRule("/v1/messages/count_tokens", ("POST",), "token counting (llama-server has it; Ollama answers 404)"),
    )),
    Preset("ollama-native", "Ollama's own API, without model management: the ollama clients and CLI, "
           "litellm's ollama_chat/, Continue's and Open WebUI's Ollama connections", (
        PresetRule("/", ("GET", "HEAD"), "\"Ollama is running\": the ollama CLI's heartbeat"),
        PresetRule("/api/version", ("GET", "HEAD"), "the engine's version"),
        PresetRule("/api/tags", ("GET", "HEAD"), "the models on disk"),
        PresetRule("/api/ps", ("GET",), "the models loaded now"),
        PresetRule("/api/show", ("POST",), "one model's details"),
        PresetRule("/api/chat", ("POST",), "chat, NDJSON streaming"),
        PresetRule("/api/generate", ("POST",), "completion from a prompt"),
        PresetRule("/api/embed", ("POST",), "embeddings"),
        PresetRule("/api/embeddings", ("POST",), "embeddings, the older endpoint"),
    )),
    Preset("embeddings", "embeddings on both APIs", (
        PresetRule("/v1/embeddings", ("POST",), "OpenAI embeddings"),
        PresetRule("/api/embed", ("POST",), "Ollama embeddings"),
        PresetRule("/api/embeddings", ("POST",), "Ollama embeddings, the older endpoint"),
    )),
)}


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise AiServerError(f"no preset named {name!r} (presets: {', '.join(PRESETS)})") from None


def apply(path: Path, name: str) -> list[str]:
    """Add preset `name`'s rules to the allowlist file at `path`, keeping its comments; what changed."""
    preset = get(name)
    return allowlist.add_rules(path, [(r.path, list(r.methods), f"preset {preset.name}: {r.what}") for r in preset.rules])


def listing() -> str:
    """`allow preset --list`: each preset, what it is for, its rules."""
    lines: list[str] = []
    for preset in PRESETS.values():
        lines.append(f"{preset.name}: {preset.summary}")
        width = max(len(r.path) for r in preset.rules)
        lines += [f"    {', '.join(r.methods):<9} {r.path:<{width}}  {r.what}" for r in preset.rules]
    return "\n".join(lines)
