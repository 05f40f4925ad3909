"""Writing outputs so that a failure never leaves a half-written file behind.

Every output is written to a hidden temporary file beside its target and renamed into place
only when complete. Three rules a user can rely on:

- an existing target keeps its permission bits (a 0600 file stays 0600); a new one gets the
  mode a plain ``open()`` would give it (0666 less the umask);
- a symbolic link at the target is written *through*: the file it points to is replaced and
  the link stays (a dangling link creates its target);
- a temporary file left by a killed writer (``.NAME.PID.XXXX.tmp``, its writer no longer
  running) is removed by the next write of the same target.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from pscompress.core.errors import UserError

_TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    target = _write_target(Path(path))
    directory = target.parent
    if not directory.is_dir():
        raise UserError(f"cannot write {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise UserError(f"cannot write {path}: directory {directory} is not writable")
    if target.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    if target.exists() and not target.is_file():
        raise UserError(f"cannot write {path}: it is not a regular file")
    _remove_stale_temporaries(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=_TMP_SUFFIX, dir=directory)
    except OSError as exc:  # e.g. a directory of a special file system that takes no new files
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _mode_for(target))
        _flush_to_disk(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def _write_target(path: Path) -> Path:
    """The path whose file is replaced: symbolic links are followed, even to a missing file."""
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    return target if str(target.parent) else Path(".") / target


def _mode_for(target: Path) -> int:
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_current_umask()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _flush_to_disk(path: str) -> None:
    """A rename must never publish a file whose data is still only in the page cache."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _remove_stale_temporaries(target: Path) -> None:
    """Delete ``.NAME.PID.XXXX.tmp`` files beside ``target`` whose writer is no longer running."""
    prefix = f".{target.name}."
    for candidate in target.parent.glob(f".{_glob_escape(target.name)}.*{_TMP_SUFFIX}"):
        pid_text = candidate.name[len(prefix):].split(".", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            with contextlib.suppress(OSError):
                candidate.unlink()


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
