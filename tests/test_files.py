"""Atomic outputs (pscompress.core.files): modes kept, links written through, no stale temporaries."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pscompress import UserError
from pscompress.core.files import atomic_output, write_text_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_overwriting_keeps_the_existing_mode(tmp_path: Path) -> None:
    target = tmp_path / "secret.json"
    target.write_text("old")
    target.chmod(0o600)
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert mode(target) == 0o600


def test_a_new_file_gets_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "new.txt", "x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "new.txt") == 0o640


def test_a_symlink_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "store" / "model.onnx"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "current.onnx"
    link.symlink_to(real)
    write_text_atomic(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new"
    assert sorted(p.name for p in real.parent.iterdir()) == ["model.onnx"]


def test_a_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "real.json")
    write_text_atomic(link, "{}")
    assert link.is_symlink() and (tmp_path / "real.json").read_text() == "{}"


def test_a_failed_block_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_special_paths_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot write"):
        write_text_atomic("/proc/pscompress-test.onnx", "x")
    with pytest.raises(UserError, match="not a regular file"):
        write_text_atomic("/dev/null", "x")


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    writer = textwrap.dedent(f"""
        import os, sys, time
        from pscompress.core.files import atomic_output
        with atomic_output({str(target)!r}) as tmp:
            tmp.write_bytes(b"partial")
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(".model.onnx.") and not target.exists()

    # A temporary of a writer that is still running is left alone.
    live = tmp_path / f".model.onnx.{os.getpid()}.abcd.tmp"
    live.write_bytes(b"in progress")
    write_text_atomic(target, "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "model.onnx"])
    assert target.read_text() == "done"
