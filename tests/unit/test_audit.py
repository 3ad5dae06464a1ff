from ai_server.children.audit import Listener, is_loopback, violations


def test_loopback_only_is_clean() -> None:
    assert violations([Listener(1, "ollama", "127.0.0.1", 11434), Listener(2, "runner", "::1", 40001),
                       Listener(3, "runner", "::ffff:127.0.0.1", 40002)]) == []


def test_anything_else_is_named() -> None:
    found = violations([Listener(1, "ollama", "0.0.0.0", 11434), Listener(9, "runner", "::", 5000),
                        Listener(2, "ollama", "100.64.0.1", 11434), Listener(3, "x", "127.0.0.1", 1)])
    assert found == ["ollama (pid 1) listens on 0.0.0.0:11434", "runner (pid 9) listens on [::]:5000",
                     "ollama (pid 2) listens on 100.64.0.1:11434"]


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.5") and is_loopback("::1") and not is_loopback("::") and not is_loopback("nonsense")
