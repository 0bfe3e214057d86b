"""The run lock's failures and models too big to build, each refused in one line before anything is written.

A full disk and a read-only folder are injected at the lock file's write and open (the tests run as root,
whom permissions do not stop); a folder where the lock file goes is real. A model's size is refused by
formula wherever one is built: ``config.json`` of a tiny run is edited to ask for a huge one.
"""

import errno
import json
import os
import re
import shutil

import pytest
from cli_helpers import TINY, one_line_error

from pyrovae import ModelConfig, build_vae, load_run
from pyrovae.cli import main
from pyrovae.files import NoSpaceError
from pyrovae.memory import TooBig, parameter_bytes
from pyrovae.model.size import weight_bytes
from pyrovae.runs.lock import CannotLock, RunLock
from pyrovae.runs.rundir import RunDir
from pyrovae.runs.writer import RunWriter


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
    with pytest.raises(NoSpaceError, match=r"^no space left on the device of .*deeper for the lock file run\.lock; "
                                           r"free some space$"):
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


def crafted(run, tmp_path, **model):
    """A copy of ``run`` whose config.json asks for the model settings ``model``."""
    copy = tmp_path / "crafted"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"].update(model)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("model,said,in_cli", [
    ({"hidden": [10_000_000, 10_000_000]}, "hidden=10000000", "--hidden 10000000"),
    ({"image_shape": [1, 10**10, 10**10]}, "image_shape=[1, 10000000000, 10000000000]", None),
], ids=["hidden", "image_shape"])
def test_every_command_that_builds_a_model_refuses_one_that_cannot_fit(run, tmp_path, capsys, model, said, in_cli):
    copy = crafted(run, tmp_path, **model)
    name = said.partition("=")[0]
    with pytest.raises(TooBig, match=rf"^{re.escape(said)} needs about .*B for the model's weights; this machine "
                                     rf"has .*B free; lower {name}$"):
        load_run(copy, data=False)
    in_cli = in_cli or said
    for argv in (["evaluate", str(copy), "--elbo-only", "--no-progress"],
                 ["sample", str(copy), "--n", "4", "--out", str(tmp_path / "s.npy")]):
        assert main(argv) == 2
        err = one_line_error(capsys, argv[0])
        assert in_cli in err and err.endswith(f"lower {in_cli.split()[0].partition('=')[0]}\n"), err
    assert not (tmp_path / "s.npy").exists() and not (copy / "eval.json").exists()


@pytest.mark.parametrize("config", [
    ModelConfig(image_shape=(1, 8, 8)), ModelConfig(image_shape=(3, 9, 7), net="conv", hidden=(32, 16)),
    ModelConfig(image_shape=(1, 8, 8), prior="vamp", prior_components=5),
    ModelConfig(image_shape=(1, 8, 8), prior="mixture", likelihood="gaussian", learn_scale="decoder"),
    ModelConfig(image_shape=(1, 8, 8), prior="class-means", num_classes=4, decoder_conditioning=True),
    ModelConfig(image_shape=(1, 8, 8), latent_layers=2, z1_dim=6, guide="iaf"),
], ids=["mlp", "conv", "vamp", "mixture", "class-means", "two-layers"])
def test_the_formula_is_a_close_lower_bound_on_the_parameters(config):
    built = parameter_bytes(build_vae(config))
    assert built / 2 < weight_bytes(config) <= built


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_sizes_past_what_torch_can_count_are_refused_not_overflowed(net):
    with pytest.raises(TooBig, match=r"^image_shape=\[3, 10000000000, 10000000000\] needs .*; lower image_shape$"):
        build_vae(ModelConfig(image_shape=(3, 10**10, 10**10), net=net))
