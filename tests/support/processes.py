"""Killing Ray worker processes by title, as a crash or the OOM killer would."""

import psutil


def kill_processes_titled(prefix: str, limit: int | None = None) -> list[int]:
    """SIGKILL processes whose title (Ray sets ``ray::<ActorClass>``) starts with prefix (at most ``limit``).

    Only this test process's descendants: the Ray it started (its raylet forks the workers). Another
    pytest-xdist worker's Ray, or any other Ray on the machine, is left alone."""
    killed = []
    for process in sorted(psutil.Process().children(recursive=True), key=lambda p: p.pid):
        try:
            title = " ".join(process.cmdline()).strip()
            if title.startswith(prefix):
                process.kill()
                killed.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if limit is not None and len(killed) >= limit:
            break
    return killed
