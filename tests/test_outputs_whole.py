"""Output files are whole or absent, and an output path that cannot be written is refused in one line.

A full disk and a read-only folder are injected at the write (the tests run as root, whom permissions do not
stop); folders where a file goes are real. Each refusal leaves what was there as it was, and no temporary file.
"""

import errno
import os

import numpy as np
import pytest
from cli_helpers import TINY, one_line_error

from pyrovae.cli import commands, main
from pyrovae.files import CannotWrite, NoSpaceError, atomic_file, write_atomically


def fail_writes(monkeypatch, code, after=0):
    """Make ``os.write`` to a temporary ``*.tmp`` file raise ``OSError(code)`` once ``after`` bytes are written."""
    real, written = os.write, []

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            if sum(written) >= after:
                raise OSError(code, os.strerror(code))
            written.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_samples_too_big_for_the_disk_are_refused_and_the_earlier_file_kept(run, tmp_path, capsys):
    keep = tmp_path / "keep.npy"
    assert main(["sample", str(run), "--n", "8", "--out", str(keep)]) == 0
    before = keep.read_bytes()
    assert main(["sample", str(run), "--n", "1000000000000", "--out", str(keep)]) == 2
    err = one_line_error(capsys, "sample")
    assert "--n 1000000000000" in err and f"{tmp_path} has" in err and "free" in err, err
    assert keep.read_bytes() == before and os.listdir(tmp_path) == ["keep.npy"]


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_a_disk_that_fills_up_while_sampling_leaves_the_file_as_it_was(run, tmp_path, monkeypatch, capsys, suffix):
    keep, new = tmp_path / f"keep{suffix}", tmp_path / f"new{suffix}"
    assert main(["sample", str(run), "--n", "8", "--out", str(keep)]) == 0
    before = keep.read_bytes()
    monkeypatch.setattr(commands, "SAMPLE_CHUNK", 5)
    fail_writes(monkeypatch, errno.ENOSPC, after=500)  # in the second chunk's write
    for out in (keep, new):
        assert main(["sample", str(run), "--n", "20", "--out", str(out)]) == 2
        err = one_line_error(capsys, "sample")
        assert err.startswith("pyrovae sample: error: no space left") and out.name in err, err
        assert "free some space" in err, err
    assert keep.read_bytes() == before and sorted(os.listdir(tmp_path)) == [keep.name]  # no 0-byte new file


def test_samples_streamed_in_chunks_make_one_whole_array(run, tmp_path, monkeypatch):
    monkeypatch.setattr(commands, "SAMPLE_CHUNK", 7)
    for suffix in (".npy", ".csv"):
        assert main(["sample", str(run), "--n", "30", "--seed", "3", "--out", str(tmp_path / f"s{suffix}")]) == 0
    array = np.load(tmp_path / "s.npy")
    assert array.shape == (30, 64) and array.dtype == np.float32
    np.testing.assert_allclose(array, np.loadtxt(tmp_path / "s.csv", delimiter=","), rtol=1e-6)


def test_a_read_only_folder_is_refused_before_sampling(run, tmp_path, monkeypatch, capsys):
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(tmp_path) in (os.fspath(path), os.path.dirname(os.fspath(path))):  # the up-front check opens the folder
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert main(["sample", str(run), "--n", "8", "--out", str(tmp_path / "s.npy")]) == 2
    err = one_line_error(capsys, "sample")
    assert "s.npy" in err and os.strerror(errno.EROFS) in err and "--out FILE" in err, err
    with pytest.raises(CannotWrite, match=r"^cannot write .*s\.npy \(Read-only file system\); make sure .* is "
                                          r"writable, or write the file elsewhere$"):
        write_atomically(tmp_path / "s.npy", b"data")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", [["sample", "--out", "{dir}/dir.png"], ["evaluate", "--out", "{dir}/dir.png"],
                                     ["evaluate"]])
def test_an_output_path_that_is_a_folder_is_refused(run, tmp_path, capsys, command):
    out = tmp_path / "dir.png" if "--out" in command else run / "eval.json"
    (out / "inside").mkdir(parents=True)
    name, *flags = (part.format(dir=tmp_path) for part in command)
    assert main([name, str(run), *flags]) == 2
    err = one_line_error(capsys, name)
    assert f"{out} is a folder" in err and "--out FILE" in err, err
    assert os.listdir(out) == ["inside"]
    out.joinpath("inside").rmdir()
    out.rmdir()


def test_a_picture_that_is_a_folder_fails_plot_in_one_line(run, tmp_path, capsys):
    (tmp_path / "samples.png").mkdir()
    assert main(["plot", str(run), "--only", "samples", "--out", str(tmp_path)]) == 2
    err = one_line_error(capsys, "plot")
    assert f"{tmp_path / 'samples.png'}: it is a folder; remove it" in err, err
    assert os.listdir(tmp_path) == ["samples.png"]


@pytest.mark.parametrize("name", ["metrics.jsonl", "eval.json", "samples.png"])
def test_train_refuses_a_folder_where_the_run_writes_a_file_before_training(tmp_path, capsys, name):
    (tmp_path / "run" / name).mkdir(parents=True)
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 2
    err = one_line_error(capsys, "train")
    assert f"{tmp_path / 'run' / name} is a folder" in err and "--out" in err, err
    assert os.listdir(tmp_path / "run") == [name] and os.listdir(tmp_path) == ["run"]  # no lock file either


def test_evaluate_refuses_samples_that_cannot_finish_in_a_day(run, capsys):
    assert main(["evaluate", str(run), "--num-samples", "1000000000000", "--limit", "2", "--no-progress"]) == 2
    err = one_line_error(capsys, "evaluate")
    assert "--num-samples" in err and "hours" in err and "K=5000" in err, err
    assert not (run / "eval.json").exists()


def test_a_failing_block_leaves_the_file_as_it_was_and_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(KeyError):
        with atomic_file(path) as file:
            file.write(b"new")
            raise KeyError("stop")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
    with atomic_file(path) as file:
        file.write(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.bin"]
    assert issubclass(NoSpaceError, CannotWrite)
