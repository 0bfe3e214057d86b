"""``pyrovae train --resume``: to the run's own epochs unless --epochs says more, never fewer; flags that cannot
change are refused, those that may are noted; config.json describes the run after each."""

import json
import shutil

import pytest

import pyrovae
from pyrovae.cli import main

TINY = ["--hidden", "16", "--z-dim", "2", "--threads", "1", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of 2 epochs on the digits, copied by ``run`` for each test."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--epochs", "2", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture
def run(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def config(run):
    return json.loads((run / "config.json").read_text())


def epochs_in_metrics(run):
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def resume(run, *argv):
    return main(["train", "--resume", "--out", str(run), "--no-progress", *argv])


def test_resume_goes_on_to_the_runs_own_epochs(run, capsys):
    stopped = config(run)  # as after Ctrl-C in epoch 3 of a run of 4 epochs
    stopped["train"]["epochs"] = 4
    (run / "config.json").write_text(json.dumps(stopped))
    assert resume(run) == 0
    assert epochs_in_metrics(run) == [1, 2, 3, 4]
    assert config(run) == stopped
    assert "replaces" not in capsys.readouterr().out


def test_a_run_at_its_epochs_trains_nothing_and_keeps_its_config(run):
    before, checkpoint = config(run), (run / "checkpoint.pt").read_bytes()
    assert resume(run) == 0
    assert epochs_in_metrics(run) == [1, 2] and config(run) == before and config(run)["train"]["epochs"] == 2
    assert (run / "checkpoint.pt").read_bytes() == checkpoint


def test_more_epochs_are_trained_noted_and_written_into_the_config(run, capsys):
    before = config(run)
    assert resume(run, "--epochs", "3", *TINY) == 0  # the model flags as the run has them are no change
    assert epochs_in_metrics(run) == [1, 2, 3]
    assert config(run)["train"] == {**before["train"], "epochs": 3}
    assert config(run)["model"] == before["model"] and config(run)["data"] == before["data"]
    assert "  --epochs 3 replaces the run's 2, in config.json too\n" in capsys.readouterr().out


def test_a_resumable_setting_other_than_epochs_is_noted_and_recorded(run, capsys):
    assert resume(run, "--skip-nonfinite", "3") == 0
    assert config(run)["train"]["skip_nonfinite"] == 3 and config(run)["train"]["epochs"] == 2
    assert "  --skip-nonfinite 3 replaces the run's 0" in capsys.readouterr().out


@pytest.mark.parametrize("argv,refused", [
    (["--epochs", "1"], "--epochs 1 is fewer than the 2 epochs trained; ask for --epochs 2 or more"),
    (["--z-dim", "3"], "--z-dim cannot change when resuming (the run's: 2)"),
    (["--hidden", "16", "8"], "--hidden cannot change when resuming (the run's: [16])"),
    (["--conditional"], "--conditional cannot change when resuming (the run's: False)"),
    (["--binarize", "none"], "--binarize cannot change when resuming (the run's: dynamic)"),
    (["--val-fraction", "0.2"], "--val-fraction cannot change when resuming (the run's: 0.1)"),
    (["--lr", "0.5"], "--lr cannot change when resuming (the run's: 0.001)"),
], ids=["fewer-epochs", "model", "model-list", "conditional", "data", "data-split", "training"])
def test_a_flag_that_cannot_apply_is_refused_in_one_line_and_the_run_is_left_alone(run, capsys, argv, refused):
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    assert resume(run, *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pyrovae train: error: {refused}") and err.count("\n") == 1, err
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_fit_in_python_refuses_fewer_epochs_than_trained_and_keeps_the_config(tmp_path):
    data = pyrovae.load_dataset(pyrovae.DataConfig(dataset="digits"))
    vae = pyrovae.build_vae(pyrovae.ModelConfig(image_shape=data.image_shape, z_dim=2, hidden=(16,)))
    pyrovae.fit(vae, data, pyrovae.TrainConfig(epochs=2), run_dir=tmp_path, progress=False, verbose=False)
    config = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match="epochs=1 is fewer than the 2 epochs trained"):
        pyrovae.fit(vae, data, pyrovae.TrainConfig(epochs=1), run_dir=tmp_path, resume=True, progress=False)
    assert (tmp_path / "config.json").read_text() == config
