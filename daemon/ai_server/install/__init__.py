"""`ai-server install` / `uninstall`: one LaunchAgent on macOS, a systemd user unit on Linux.

Each platform module turns what it finds into a plan: a list of Actions, each printable (for
--dry-run) and applicable. Renderers (the plist, the unit) are pure; everything that touches the
system goes through `System`, so tests can stand in for launchctl, brew and systemctl on PATH.
"""
