"""HTTPS on the proxy's listener with this machine's MagicDNS certificate (`[proxy] tls =
"tailscale"`), for apps that refuse plain HTTP to a bare IP (Apple's frameworks do).

`tailscale cert` gets and renews the certificate (Let's Encrypt, through Tailscale); ai-server
asks for it at start and every 12 hours, and hands a changed one to the running HAProxy
through its runtime API, without a reload. Without a certificate there is no listener: the
proxy waits and says why, it never falls back to plain HTTP.
"""

from __future__ import annotations

import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ai_server.base.errors import AiServerError
from ai_server.base.files import atomic_write

PEM = "tls.pem"  # certificate and key, as HAProxy's `crt` takes them; named relative to the state dir
RENEW_EVERY_S = 12 * 3600
RETRY_S = 60.0  # while there is no certificate at all


class TlsError(AiServerError):
    """No certificate could be had; the message says why."""


@dataclass(frozen=True)
class Certificate:
    domain: str
    not_after: str | None   # ISO 8601, UTC


def not_after(cert_file: Path) -> str | None:
    try:
        decoded = ssl._ssl._test_decode_cert(str(cert_file))  # type: ignore[attr-defined]
        when = datetime.strptime(decoded["notAfter"], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
        return when.isoformat(timespec="seconds").replace("+00:00", "Z")
    except Exception:  # an unreadable date is shown as unknown; the certificate still serves
        return None


def obtain(program: str, domain: str, state_dir: Path) -> tuple[Certificate, bool]:
    """`tailscale cert` for `domain`, written as one PEM (0600) in the state dir. Blocking.
    (certificate, True when the PEM changed)."""
    with tempfile.TemporaryDirectory(dir=state_dir, prefix=".tls-") as scratch:
        cert, key = Path(scratch) / "cert.pem", Path(scratch) / "key.pem"
        try:
            result = subprocess.run([program, "cert", "--cert-file", str(cert), "--key-file", str(key), domain],
                                    capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise TlsError(f"`tailscale cert {domain}` failed: {err}") from None
        if result.returncode != 0 or not cert.exists() or not key.exists():
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
            raise TlsError(f"`tailscale cert {domain}`: {last[0][:200]} (HTTPS certificates must be enabled "
                           "in the tailnet's admin console)")
        pem = cert.read_bytes().rstrip(b"\n") + b"\n" + key.read_bytes()
        expires = not_after(cert)
    target = state_dir / PEM
    try:
        changed = target.read_bytes() != pem
    except FileNotFoundError:
        changed = True
    if changed:
        atomic_write(target, pem, 0o600)
    return Certificate(domain, expires), changed
