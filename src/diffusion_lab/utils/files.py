"""One way to write a file that a kill cannot leave half written: a temporary file, fsync, rename."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write`` on a binary file in ``path``'s folder, then rename that file to ``path``.

    A process killed at any moment (SIGKILL, power loss after the fsync) leaves either the old file
    or the new one at ``path``, never a truncated one. Folders are created; an exception inside
    ``write`` removes the temporary file and leaves ``path`` as it was. Every kind of file goes
    through here: ``torch.save``, ``Figure.savefig``, ``torchvision``'s ``save_image``,
    ``numpy.savez_compressed`` and text all take an open binary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its folders), waiting for another process to let go.

    For work several processes may start at once on a shared cache (parallel sweep jobs, test workers):
    the first does it, the others wait and then find it done. The system drops the lock when its process
    ends, however it ends.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda file: file.write(text.encode()))


def check_writable(folder: str | Path, key: str = "output") -> Path:
    """``folder`` when files can be written in it (its missing parents can be created), else a one-line
    ``ValueError`` naming ``key``.

    Commands call it before any work, so a typo in ``output=`` costs nothing. It tries for real (a
    temporary file, in folders it creates and removes again), and leaves nothing behind: the folders
    are made when the first file is written.
    """
    folder = Path(folder)
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        raise ValueError(
            f"{key}={folder} cannot be written ({existing} is a file): pass {key}= a path you can write to"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(f"{key}={folder} cannot be written ({reason}): pass {key}= a path you can write to") from None
    finally:
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()
    return folder


#: Where a failed job of a ``-m`` sweep leaves its one-line reason (``diffusion-lab-report`` shows it).
JOB_ERROR_FILE = "error.txt"
