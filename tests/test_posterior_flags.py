"""Every guide, estimator and layer count trains and evaluates from the CLI on the digits, pictures included."""

import json
import math

import pytest

from pyrovae.cli import main
from pyrovae.model.config import ModelConfig
from pyrovae.report.plots import PICTURES, TABLE_PICTURES
from pyrovae.settings import settings_from_json
from pyrovae.training.config import TrainConfig

QUICK = ["--epochs", "1", "--hidden", "16", "--z-dim", "2", "--threads", "1", "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("flags", [
    ["--guide", "iaf", "--elbo", "iwae", "--particles", "3", "--estimator", "dreg"],
    ["--guide", "spline", "--flow-layers", "1", "--elbo", "iwae", "--particles", "2", "--estimator", "stl"],
    ["--latent-layers", "2", "--elbo", "iwae", "--particles", "3", "--estimator", "dreg", "--conditional"],
    ["--latent-layers", "2", "--z1-dim", "3", "--guide", "iaf", "--elbo", "meanfield"],
], ids=["iaf-dreg", "spline-stl", "two-layers-dreg-cvae", "two-layers-iaf-meanfield"])
def test_trains_and_evaluates_from_the_cli(flags, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *QUICK, *flags, "--out", str(run)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    if "meanfield" in flags:
        assert notes == ["pyrovae train: note: --elbo meanfield has no closed-form KL for a flow guide or two "
                         "stochastic layers: training with the sampled KL, as --elbo trace"]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["latent_layers"] == (2 if "--latent-layers" in flags else 1)
    assert main(["evaluate", str(run), "--num-samples", "20"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert math.isfinite(result["nll"]) and 0 < result["nll"] < result["neg_elbo"] + 1
    drawn = {path.stem for path in run.glob("*.png")}
    assert drawn == set(PICTURES) - set(TABLE_PICTURES) - ({"class_samples"} if "--conditional" not in flags else set())


def test_a_config_saved_before_these_settings_existed_loads_with_their_defaults():
    model = settings_from_json(ModelConfig, {"image_shape": [1, 8, 8], "z_dim": 2}, "config.json, section 'model'")
    assert (model.guide, model.flow_layers, model.latent_layers, model.z1_dim) == ("diagonal", 2, 1, None)
    assert settings_from_json(TrainConfig, {"elbo": "iwae"}, "config.json, section 'train'").estimator == "standard"
