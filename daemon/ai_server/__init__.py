"""ai-server: serve a private LLM over Tailscale, safely and boringly."""

__version__ = "0.1.0"
