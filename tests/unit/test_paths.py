from pathlib import Path

from ai_server.base.paths import resolve


def test_macos_defaults() -> None:
    p = resolve(env={"HOME": "/Users/me"}, platform="darwin")
    assert p.config_dir == Path("/Users/me/.config/ai-server")
    assert p.state_dir == Path("/Users/me/Library/Application Support/ai-server")
    assert p.log_dir == Path("/Users/me/Library/Logs/ai-server")
    assert p.control_socket.name == "control.sock" and p.log_file.name == "ai-server.jsonl"


def test_linux_defaults_follow_xdg() -> None:
    p = resolve(env={"HOME": "/home/me"}, platform="linux")
    assert p.state_dir == Path("/home/me/.local/state/ai-server")
    assert p.log_dir == Path("/home/me/.local/state/ai-server/logs")
    p = resolve(env={"HOME": "/home/me", "XDG_CONFIG_HOME": "/x/c", "XDG_STATE_HOME": "/x/s"}, platform="linux")
    assert p.config_dir == Path("/x/c/ai-server") and p.state_dir == Path("/x/s/ai-server")


def test_overrides_win() -> None:
    env = {"HOME": "/h", "AI_SERVER_CONFIG_DIR": "/c", "AI_SERVER_STATE_DIR": "/s", "AI_SERVER_LOG_DIR": "/l"}
    p = resolve(env=env, platform="darwin")
    assert (p.config_dir, p.state_dir, p.log_dir) == (Path("/c"), Path("/s"), Path("/l"))
    assert resolve("/flag", env=env).config_dir == Path("/flag")
