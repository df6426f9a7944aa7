"""One process per run folder: the ``RUN_DIR/.lock`` that training holds."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from rql_cli.errors import RQLError
from rql_cli.io.run_layout import LOCK_FILE


class RunLock:
    """Refuse a second process on one run folder (two resumes would truncate each other's logs).

    The lock is ``RUN/.lock``, created atomically with this process's pid and host; a lock whose
    process is gone (same host, pid not running) is stale and taken over. Entering takes it when the
    folder exists (a resume is refused before any data loads); a new run's folder is made, and locked,
    by :meth:`make_folder` once its inputs are checked, so a refused command leaves nothing behind.
    Leaving removes the lock, and the folder too when this lock made it and nothing else was written.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._created_folder = False
        self._held = False

    def __enter__(self) -> RunLock:
        if self.run_dir.is_dir():
            self._acquire()
        return self

    def make_folder(self) -> None:
        """Make the run folder (and its parents) and hold its lock: call before the run's first write."""
        if self._held:  # entering found the folder (a resume) and locked it
            return
        self._created_folder = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._acquire()

    def _acquire(self) -> None:
        host = socket.gethostname()
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._refuse_unless_stale(host)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w") as out:
                json.dump({"pid": os.getpid(), "host": host}, out)
            self._held = True
            return
        raise RQLError(f"Could not lock {self.run_dir}: another process keeps taking {self.path}.")

    def _refuse_unless_stale(self, host: str) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, holder_host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # unreadable: a lock torn by a crash, stale
        if holder_host != host:
            raise RQLError(
                f"{self.run_dir} is in use by an rql process on {holder_host} (pid {pid}). Wait for it, or "
                f"delete {self.path} if that process is gone."
            )
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # its process is gone
        except PermissionError:
            pass  # alive, another user's
        raise RQLError(
            f"{self.run_dir} is in use by another rql process (pid {pid}): two runs in one folder would "
            f"overwrite each other's checkpoints and logs. Wait for it to finish, or stop it with "
            f"`kill -INT {pid}` (it saves a checkpoint), then resume."
        )

    def __exit__(self, *exc_info: object) -> None:
        if not self._held:
            return
        self.path.unlink(missing_ok=True)
        self._held = False
        if self._created_folder and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()
