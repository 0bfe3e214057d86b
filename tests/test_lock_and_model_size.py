"""The run lock's failures and models too big to build, each refused in one line before anything is written.

A full disk and a read-only folder are injected at the lock file's write and open (the tests run as root,
whom permissions do not stop); a folder where the lock file goes is real. A model's size is refused by
formula wherever one is built: ``config.json`` of a tiny run is edited to ask for a huge one.
"""

import errno
import os

import pytest

from pyrovae.cli import main
from pyrovae.files import NoSpaceError
from pyrovae.runs.lock import CannotLock, RunLock
from pyrovae.runs.rundir import RunDir
from pyrovae.runs.writer import RunWriter

TINY = ["--hidden", "16", "--z-dim", "2", "--epochs", "1", "--no-progress", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lock-and-size") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def one_line_error(capsys, command):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pyrovae {command}: error: "), err
    return err


def fail_at(monkeypatch, name, code, path):
    """Make ``os.<name>`` raise ``OSError(code)`` for the file ``path`` (``os.pwrite``: for any descriptor)."""
    real = getattr(os, name)

    def failing(target, *args, **kwargs):
        if name == "pwrite" or os.fspath(target) == os.fspath(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real(target, *args, **kwargs)

    monkeypatch.setattr(os, name, failing)


def test_a_full_disk_at_the_lock_leaves_no_lock_file_and_no_folder(tmp_path, monkeypatch):
    out = tmp_path / "new" / "deeper" / "run"
    fail_at(monkeypatch, "pwrite", errno.ENOSPC, out.with_name("run.lock"))
    with pytest.raises(NoSpaceError, match=r"^no space left .* for the lock file run\.lock; free some space or "
                                           r"choose another run_dir$"):
        with RunWriter(RunDir(out)).writing():
            pass
    assert list(tmp_path.iterdir()) == []  # neither the 0-byte lock file nor the folders made for it
    monkeypatch.undo()
    with RunLock(out):  # and the lock was let go
        assert out.with_name("run.lock").read_text().startswith(f"pid {os.getpid()}")


def test_a_read_only_parent_is_refused_naming_the_lock_file(run, tmp_path, monkeypatch, capsys):
    fail_at(monkeypatch, "open", errno.EROFS, run.with_name("run.lock"))
    before = sorted(run.parent.iterdir())
    assert main(["plot", str(run), "--only", "samples"]) == 2
    err = one_line_error(capsys, "plot")
    assert f"lock file {run.with_name('run.lock')} (Read-only file system)" in err and "another --out" in err, err
    assert sorted(run.parent.iterdir()) == before
    with pytest.raises(CannotLock, match=r"^cannot create the lock file .*; make .* writable or choose another x$"):
        RunLock(run, "x").acquire()


def test_a_folder_where_the_lock_file_goes_is_refused_in_the_cli(run, tmp_path, capsys):
    out = tmp_path / "run"
    (tmp_path / "run.lock").mkdir()
    assert main(["train", *TINY, "--out", str(out)]) == 2
    err = one_line_error(capsys, "train")
    assert f"{tmp_path / 'run.lock'}, where the lock of {out} goes, is a folder; remove it" in err, err
    assert "--out" in err and not out.exists()
