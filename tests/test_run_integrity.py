"""A run directory proves it is intact (issue 33: items 2, 8, 9, 10, 14, 16 and 18): a damaged or crafted
checkpoint, config.json or metrics.jsonl is refused in one line naming the file, never used, never changed."""

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrovae import CheckpointError, DataConfig, ModelConfig, TrainConfig, build_vae, fit, load_dataset, load_run
from pyrovae.cli import main
from pyrovae.runs.rundir import RunDir, default_run_dir
from pyrovae.training.loop import EpochState

STORED_0_3_0 = Path(__file__).parent / "data" / "run-0.3.0"


def train(data_config, run_dir):
    """A tiny model trained for one epoch into ``run_dir``, as ``pyrovae train`` would but for its pictures."""
    data = load_dataset(data_config)
    vae = build_vae(ModelConfig(image_shape=data.image_shape, z_dim=2, hidden=(16,)))
    fit(vae, data, TrainConfig(epochs=1, device="cpu"), run_dir=run_dir, progress=False, verbose=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("integrity") / "run"
    train(DataConfig(), path)
    return path


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the trained run, to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def files_of(path):
    return {file.name: file.read_bytes() for file in sorted(path.iterdir()) if file.is_file()}


def refused_in_one_line(argv, capsys, *names):
    """Run the CLI; assert exit 2 and one line on stderr naming each of ``names``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(name in err for name in names), err
    return err


def one_line(error):
    assert "\n" not in str(error.value), str(error.value)
    return str(error.value)


def flip_bit_of(path, tensor):
    """Flip one bit inside the bytes of ``tensor`` where they lie in the file ``path``."""
    data = bytearray(path.read_bytes())
    at = data.find(tensor.numpy().tobytes())
    assert at >= 0
    data[at + tensor.element_size() // 2] ^= 0x10
    path.write_bytes(bytes(data))


# --- item 2: the checkpoint's digest --------------------------------------------------------------

@pytest.mark.parametrize("region", ["weights", "optimizer"])
def test_a_flipped_bit_in_the_checkpoint_is_refused_naming_the_file(run, region, capsys):
    checkpoint = RunDir(run).load_checkpoint()
    tensor = (checkpoint.model["decoder.net.2.bias"] if region == "weights"
              else next(iter(checkpoint.optimizer["state"].values()))["exp_avg"])
    flip_bit_of(run / "checkpoint.pt", tensor)
    with pytest.raises(CheckpointError) as error:
        load_run(run, data=False)
    assert "checkpoint.pt" in one_line(error) and "SHA-256" in str(error.value)
    refused_in_one_line(["sample", str(run), "--n", "4", "--out", str(run.parent / "s.npy")], capsys,
                        "checkpoint.pt", "restore a copy")
    assert not (run.parent / "s.npy").exists()


def test_the_checkpoint_file_is_the_state_wrapped_with_its_digest(trained):
    wrapped = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert set(wrapped) == {"format", "sha256", "payload"} and wrapped["payload"].dtype == torch.uint8


def test_a_0_3_0_checkpoint_without_a_digest_loads_with_a_note(caplog):
    with caplog.at_level(logging.WARNING, logger="pyrovae"):
        checkpoint = RunDir(STORED_0_3_0).load_checkpoint()
    assert checkpoint.progress.epoch == 2
    assert any("no SHA-256 digest" in record.getMessage() for record in caplog.records)


# --- items 8 and 16: crafted entries, with a valid digest -----------------------------------------

def rewrite(run, change):
    """Save the run's checkpoint changed by ``change``, with the digest of the change: crafted, not damaged."""
    checkpoint = RunDir(run).load_checkpoint()
    change(checkpoint)
    RunDir(run).save_checkpoint(checkpoint)


def partial_epoch(**change):
    return {**dataclasses.asdict(EpochState.start(torch.randperm(1000), 3)), **change}


def bad_numpy_state(checkpoint):
    name, keys, *position = checkpoint.rng["numpy"]
    checkpoint.rng["numpy"] = (name, keys[:3], *position)


CRAFTED = {
    "rng": lambda checkpoint: setattr(checkpoint, "rng", {}),
    "rng numpy": bad_numpy_state,
    "partial": lambda checkpoint: setattr(checkpoint.progress, "partial", {"foo": 1}),
    "partial step": lambda checkpoint: setattr(checkpoint.progress, "partial", partial_epoch(step=10**12)),
    "metrics": lambda checkpoint: setattr(checkpoint.progress, "metrics", [1, 2, 3]),
    "epoch": lambda checkpoint: setattr(checkpoint.progress, "epoch", -1),
    "skipped": lambda checkpoint: setattr(checkpoint.progress, "skipped", -5),
    "kl_weight": lambda checkpoint: setattr(checkpoint.progress, "kl_weight", torch.tensor(float("nan"))),
    "kl_weight of three": lambda checkpoint: setattr(checkpoint.progress, "kl_weight", torch.zeros(3)),
}


@pytest.mark.parametrize("entry", CRAFTED)
def test_a_crafted_checkpoint_entry_is_refused_before_the_resume_touches_anything(run, entry, capsys):
    rewrite(run, CRAFTED[entry])
    before = files_of(run)
    refused_in_one_line(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress", "--threads", "1"],
                        capsys, "checkpoint.pt", repr(entry.split()[0]))
    assert files_of(run) == before


def test_nan_weights_are_refused_in_one_line_naming_the_file(run, capsys):
    rewrite(run, lambda checkpoint: checkpoint.model["decoder.net.2.bias"].fill_(float("nan")))
    with pytest.raises(CheckpointError) as error:
        load_run(run, data=False)
    assert "checkpoint.pt" in one_line(error) and "decoder.net.2.bias" in str(error.value)
    refused_in_one_line(["sample", str(run), "--n", "4", "--out", str(run.parent / "s.npy")], capsys, "NaN")


# --- item 9: a crafted config.json ----------------------------------------------------------------

@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, None], ids=["deeply nested", "source not an object"])
def test_a_crafted_config_is_refused_naming_the_file(run, text, capsys):
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(text or json.dumps({**config, "source": "tampered"}))
    with pytest.raises(CheckpointError) as error:
        load_run(run)
    assert "config.json" in one_line(error)
    refused_in_one_line(["plot", str(run)], capsys, "config.json")


# --- item 10: a damaged metrics.jsonl -------------------------------------------------------------

@pytest.mark.parametrize("line", [b"42", b'{"epoch": 4}', b'{"epoch": 2, "train_loss": \xff\xfe}'],
                         ids=["a number", "a row without its numbers", "not UTF-8"])
def test_a_damaged_metrics_line_is_named_and_only_what_reads_metrics_is_stopped(run, line, capsys):
    with open(run / "metrics.jsonl", "ab") as metrics:
        metrics.write(line + b"\n")
    with pytest.raises(CheckpointError) as error:
        load_run(run, data=False)
    assert "metrics.jsonl line 2" in one_line(error)
    refused_in_one_line(["plot", str(run), "--only", "training_curves"], capsys, "metrics.jsonl line 2")
    assert load_run(run, data=False, metrics=False).metrics is None  # what evaluate and sample ask for
    for command, out in (("evaluate", "e.json"), ("sample", "s.npy"), ("encode", "z.npy"), ("reconstruct", "r.npy")):
        flags = ["--elbo-only", "--limit", "5", "--no-progress"] if command == "evaluate" else []
        assert main([command, str(run), *flags, "--out", str(run.parent / out)]) == 0, command


# --- item 14: the device is checked before the checkpoint is blamed -------------------------------

@pytest.mark.parametrize("device", ["tpu", *(pytest.param(cuda, marks=pytest.mark.skipif(
    torch.cuda.is_available(), reason="this machine has a GPU")) for cuda in ("cuda", torch.device("cuda")))])
def test_a_device_this_machine_lacks_is_named_not_the_checkpoint(trained, device):
    with pytest.raises(ValueError) as error:
        load_run(trained, device=device, data=False)
    assert str(device) in one_line(error) and "checkpoint" not in str(error.value)


# --- item 18: run-directory paths -----------------------------------------------------------------

def test_a_run_on_a_relative_dataset_path_loads_from_any_working_directory(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    np.save("ok.npy", np.random.default_rng(0).random((60, 4, 4), dtype=np.float32))
    train(DataConfig(dataset="ok.npy"), "run")
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = load_run(tmp_path / "here" / "run")
    assert len(loaded.data.train) + len(loaded.data.val) + len(loaded.data.test) == 60


def test_an_empty_run_directory_is_refused_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where an empty path would put the run
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,)))
    with pytest.raises(ValueError) as error:
        fit(vae, torch.rand(40, 4, 4), TrainConfig(epochs=1, device="cpu"), run_dir="", progress=False)
    assert "empty" in one_line(error)
    refused_in_one_line(["train", "--epochs", "1", "--out", ""], capsys, "empty")
    assert list(tmp_path.iterdir()) == []


def test_default_run_dirs_of_processes_started_in_one_second_differ(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda _: "20250101-120000")
    names = set()
    for pid in (101, 102, 103):  # three processes choosing at once: none has created its folder yet
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        names.add(default_run_dir(tmp_path))
    assert len(names) == 3
    taken = default_run_dir(tmp_path)
    taken.mkdir()
    assert default_run_dir(tmp_path) != taken  # the same process again, in the same second
