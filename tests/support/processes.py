"""Killing Ray worker processes by title, as a crash or the OOM killer would."""

import os
import signal


def kill_processes_titled(prefix: str, limit: int | None = None) -> list[int]:
    """SIGKILL processes whose title (Ray sets ``ray::<ActorClass>``) starts with prefix (at most ``limit``)."""
    killed = []
    for entry in sorted(os.listdir("/proc")):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                title = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if title.startswith(prefix):
            os.kill(int(entry), signal.SIGKILL)
            killed.append(int(entry))
            if limit is not None and len(killed) >= limit:
                break
    return killed
