"""--clip-norm, --early-stop and --keep best (issue 32: what users expected and did not find)."""

import json
import logging

import pytest
import torch

from pyrovae import TrainConfig, fit, from_arrays
from pyrovae.cli import main
from pyrovae.runs.rundir import BEST, RunDir
from pyrovae.settings import SettingError
from pyrovae.training.callbacks import Callback
from pyrovae.training.step import ELBOLoss


def images():
    return from_arrays(torch.bernoulli(torch.full((40, 4, 4), 0.4)))


def forced_validation(monkeypatch, losses):
    """Make the validation -ELBO of the epochs trained ``losses``, in order (then 0)."""
    values = iter(losses)
    monkeypatch.setattr(ELBOLoss, "validation_loss", lambda self, val, processes=None: next(values, 0.0))


@pytest.mark.parametrize("name", ["clip_norm", "early_stop"])
def test_clip_norm_and_early_stop_must_be_positive(name):
    with pytest.raises(SettingError, match=name) as error:
        TrainConfig(device="cpu", **{name: 0})
    assert error.value.setting == name


def test_clip_norm_clips_every_step_to_n(small_vae, monkeypatch):
    calls = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda parameters, max_norm: calls.append((parameters, max_norm)) or clip(parameters, max_norm))
    fit(small_vae, images(), TrainConfig(epochs=1, batch_size=8, device="cpu", clip_norm=0.5), progress=False,
        verbose=False)
    assert len(calls) == 5  # 40 images in batches of 8
    assert all({id(p) for p in parameters} == {id(p) for p in small_vae.parameters()} and max_norm == 0.5
               for parameters, max_norm in calls)
    assert all(p.grad is None or p.grad.norm() < 0.5 + 1e-4 for p in small_vae.parameters())


def test_the_cli_trains_with_clip_norm(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--clip-norm", "1", "--hidden", "16", "--z-dim", "2", "--epochs", "1",
                 "--threads", "1", "--no-progress", "--device", "cpu"]) == 0
    [row] = RunDir(out).read_metrics()
    assert all(torch.isfinite(torch.tensor(value)) for value in row.values())
    assert json.loads((out / "config.json").read_text())["train"]["clip_norm"] == 1


def test_early_stop_ends_training_after_the_epochs_without_improvement(small_vae, monkeypatch, tmp_path, caplog):
    forced_validation(monkeypatch, [3.0, 4.0, 2.0, 1.0, 0.5])
    with caplog.at_level(logging.WARNING, logger="pyrovae"):
        rows = fit(small_vae, images(), TrainConfig(epochs=5, batch_size=8, device="cpu", early_stop=1),
                   run_dir=tmp_path / "run", progress=False, verbose=False)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert [row["epoch"] for row in RunDir(tmp_path / "run").read_metrics()] == [1, 2]
    assert RunDir(tmp_path / "run").read_config()["train"]["epochs"] == 5
    assert "early_stop=1" in caplog.text and "after epoch 2" in caplog.text


def test_keep_best_keeps_the_epoch_of_lowest_validation_loss(small_vae, monkeypatch, tmp_path):
    forced_validation(monkeypatch, [3.0, 1.0, 2.0])

    class Weights(Callback):
        after = {}

        def epoch_done(self, row):
            self.after[int(row["epoch"])] = {k: v.clone() for k, v in small_vae.state_dict().items()}

    run = RunDir(tmp_path / "run")
    fit(small_vae, images(), TrainConfig(epochs=3, batch_size=8, device="cpu", keep="best"), run_dir=run.path,
        progress=False, verbose=False, callbacks=[Weights()])
    best = run.load_checkpoint(name=BEST)
    assert best.progress.epoch == 2 and run.load_checkpoint().progress.epoch == 3
    assert all(torch.equal(best.model[k], v) for k, v in Weights.after[2].items())
    assert not all(torch.equal(best.model[k], v) for k, v in Weights.after[3].items())
    fit(small_vae, images(), TrainConfig(epochs=1, batch_size=8, device="cpu"), run_dir=run.path, overwrite=True,
        progress=False, verbose=False)
    assert not run.file(BEST).exists()
