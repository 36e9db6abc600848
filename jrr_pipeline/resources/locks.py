"""Cross-process locks that keep two runs off the same DuckDB file or the same device.

Dagster pools (see ``pipeline.POOLS``) order steps inside one Dagster instance; these file locks also
cover a ``jrr run`` in a terminal racing a run launched from the UI, or two instances sharing one
``JRR_HOME``. A second holder waits up to ``timeout_s`` and then fails with a message naming the
lock and who holds it; it never touches the guarded resource before it owns the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_TIMEOUT_S = float(os.environ.get("JRR_LOCK_TIMEOUT_S", "3600"))
_held: dict[str, int] = {}  # resolved lock path -> depth, for re-entry within this process


class ResourceBusyError(RuntimeError):
    """Raised when a lock is still held by another process after the wait."""


def holder_of(lock_path: Path) -> dict:
    try:
        return json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def exclusive(lock_path: Path, what: str, timeout_s: float | None = None,
              owner: str = "", poll_s: float = 0.2, on_wait=None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` for the block (re-entrant within a process).

    ``on_wait(message)`` is called once when the lock is busy, so callers can log that they wait.
    """
    lock_path = Path(lock_path)
    key = str(lock_path.resolve())
    if key in _held:  # the same process already owns it (e.g. an asset inside `jrr run`)
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")  # noqa: SIM115 - closed in finally
    try:
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = holder_of(lock_path)
                message = (f"{what} is in use by another run (pid {holder.get('pid', '?')}, "
                           f"{holder.get('owner') or 'unknown owner'}, since "
                           f"{holder.get('since', '?')}); lock file {lock_path}")
                if time.monotonic() >= deadline:
                    raise ResourceBusyError(
                        f"{message}. Gave up after {timeout_s:.0f}s; wait for that run to finish "
                        f"or raise JRR_LOCK_TIMEOUT_S.") from None
                if not told and on_wait is not None:
                    on_wait(f"{message}; waiting up to {timeout_s:.0f}s")
                    told = True
                time.sleep(poll_s)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "owner": owner,
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        handle.flush()
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()

