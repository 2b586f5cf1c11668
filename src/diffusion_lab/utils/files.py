"""One way to write a file that a kill cannot leave half written: a hidden partial file, fsync, rename."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


class OutputError(OSError):
    """A file or folder of a command's output could not be written (a full disk, a folder that is not writable
    or went away); ``str()`` is one line naming it and why."""

    def __str__(self) -> str:
        return f"cannot write {self.filename} ({self.strerror})"


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into an :class:`OutputError` naming ``path``, what is being written."""
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(err.errno, err.strerror or type(err).__name__, str(path)) from err


def partial_path(path: str | Path, kind: str = "partial") -> Path:
    """The hidden sibling ``.NAME.KIND-HOST-PID`` that ``path`` is written as until it is whole.

    Hidden, so that nothing that lists outputs takes it for one; named after this machine and process, so
    that :func:`remove_stale_partials` knows when it was left by a killed process.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{socket.gethostname()}-{os.getpid()}")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def remove_stale_partials(path: str | Path) -> None:
    """Remove what processes of this machine that were killed (SIGKILL, power loss) left of ``path``: its
    :func:`partial_path` siblings whose process is gone. Those of running processes and of other machines
    that share the folder are left alone."""
    path = Path(path)
    for kind in ("partial", "replaced"):
        prefix = f".{path.name}.{kind}-{socket.gethostname()}-"
        for sibling in path.parent.glob(glob.escape(prefix) + "*"):
            pid = sibling.name[len(prefix) :]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write`` on a binary file in ``path``'s folder, then rename that file to ``path``.

    A process killed at any moment (SIGKILL, power loss after the fsync) leaves either the old file
    or the new one at ``path``, never a truncated one, and at most a hidden :func:`partial_path`, which
    the next write of ``path`` removes. Folders are created; an exception inside ``write`` (or an exit,
    such as the commands' SIGTERM) removes the partial file and leaves ``path`` as it was; an ``OSError``
    becomes an :class:`OutputError` naming ``path``. Every kind of file goes through here: ``torch.save``,
    ``Figure.savefig``, ``torchvision``'s ``save_image``, ``numpy.savez_compressed`` and text all take an
    open binary file.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path)
        tmp = partial_path(path)
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


def check_writable(folder: str | Path, key: str = "output", value: str | Path | None = None) -> Path:
    """``folder`` when files can be written in it (its missing parents can be created), else a one-line
    ``ValueError`` naming ``key`` and ``value``, the setting as given (default: ``folder``).

    Commands call it before any work, so a typo in ``output=`` costs nothing. It tries for real (a
    temporary file, in folders it creates and removes again), and leaves nothing behind: the folders
    are made when the first file is written.
    """
    folder = Path(folder)
    value = folder if value is None else value
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        raise ValueError(f"{key}={value} cannot be written ({existing} is a file): pass {key}= a path you can write to")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(f"{key}={value} cannot be written ({reason}): pass {key}= a path you can write to") from None
    finally:
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()
    return folder


#: Where a failed job of a ``-m`` sweep leaves its one-line reason (``diffusion-lab-report`` shows it).
JOB_ERROR_FILE = "error.txt"
