"""One process at a time per run directory (and per output folder of the training and eval
commands): two ``run`` processes on one folder would append the same rows twice.

The lock is ``FOLDER/.psychocounsel.lock``, held with ``fcntl.flock``: the kernel releases it when
the holder exits, however it exits, so the lock of a dead process (SIGKILL, power loss on a local
disk) is simply taken over. The file records the holder (pid, host, start time) for the message
the second process prints, and is removed on release so a finished run leaves no trace (nor an
empty folder, when the command made the folder and then failed before writing to it).
Under ``accelerate launch`` only the main process (RANK 0) takes the lock: the others are the
same job.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".psychocounsel.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["started"])))
        return f"pid {int(info['pid'])} on {info['host']}, started {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class FolderLock:
    """``with FolderLock(folder):`` holds the lock; a second holder gets a UserError (exit 2)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._made_folder = False

    def acquire(self) -> FolderLock:
        import fcntl

        if int(os.environ.get("RANK", "0") or 0) != 0:
            return self
        self._made_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(
                    f"{self.folder} is in use by {_holder(self.path)}; wait for it to finish or stop "
                    "it (a lock left by a dead process is taken over by itself)"
                ) from None
            # The holder before us may have removed the file between our open and our flock: then we
            # hold a lock on a file nobody else can see, so try again on the current one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode("utf-8"))
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # before closing: no one can take the lock on a file about to vanish
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        if self._made_folder:  # a command that failed before writing anything leaves no empty folder
            try:
                self.folder.rmdir()
            except OSError:
                pass

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
