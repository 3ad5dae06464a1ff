"""Who may call what: the tailnet's view of who is calling (tailscale, tailnet), the allowlist,
clients.toml, and the Python models the proxy is proven against."""
