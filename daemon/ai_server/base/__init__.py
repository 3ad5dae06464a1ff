"""Foundations every other part uses, importing nothing else of ai_server: the exception tree,
safe file writes, address spelling, the folders, structured logs, reading TOML."""
