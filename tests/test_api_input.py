"""Bad settings and bad arguments of the Python API are refused up front, in one line naming the setting and the fix:
every settings class checks each field against its annotation (issue 33, items 11, 12, 13, 16, 17)."""

import math

import numpy as np
import pytest
import torch

from pyrovae import DataConfig, ModelConfig, TrainConfig
from pyrovae.cli import main
from pyrovae.inference.evaluate import EvaluateConfig, log_likelihood
from pyrovae.model.build import build_vae
from pyrovae.settings import SettingError, settings_from_json

SMALL = ["--hidden", "16", "--z-dim", "2", "--epochs", "1", "--no-progress", "--device", "cpu", "--threads", "1"]


def one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, message
    return message


@pytest.mark.parametrize("make,name,fix", [
    (lambda: TrainConfig(epochs="3"), "epochs", "must be int, got '3'"),
    (lambda: TrainConfig(epochs=1.5), "epochs", "must be int, got 1.5"),
    (lambda: TrainConfig(batch_size=64.5), "batch_size", "must be int"),
    (lambda: TrainConfig(compile=1), "compile", "must be bool"),
    (lambda: ModelConfig(z_dim=2.5), "z_dim", "must be int"),
    (lambda: ModelConfig(z_dim=True), "z_dim", "must be int"),
    (lambda: ModelConfig(hidden=32), "hidden", "write hidden=(32,)"),
    (lambda: ModelConfig(hidden=[16, "8"]), "hidden", "must be tuple of int"),
    (lambda: ModelConfig(image_shape=None), "image_shape", "must be tuple of int"),
    (lambda: DataConfig(dataset=None), "dataset", "must be str, got None"),
    (lambda: DataConfig(val_fraction="0.1"), "val_fraction", "must be float"),
    (lambda: EvaluateConfig(limit=2.0), "limit", "must be int | None"),
    (lambda: TrainConfig(seed=10**30), "seed", "does not fit in a 64-bit integer"),
    (lambda: TrainConfig(seed=-1), "seed", "must lie in [0, 2**32)"),
    (lambda: ModelConfig(z_dim=10**30), "z_dim", "does not fit in a 64-bit integer"),
])
def test_a_value_of_the_wrong_type_is_a_setting_error_naming_it(make, name, fix):
    with pytest.raises(SettingError) as caught:
        make()
    assert caught.value.setting == name and one_line(caught.value).startswith(name) and fix in str(caught.value)


@pytest.mark.parametrize("make,name", [
    (lambda: TrainConfig(lr=math.inf), "lr"),
    (lambda: TrainConfig(kl_weight=math.inf), "kl_weight"),
    (lambda: TrainConfig(kl_warmup=math.nan), "kl_warmup"),
    (lambda: TrainConfig(clip_norm=math.inf), "clip_norm"),
    (lambda: ModelConfig(class_means_init=math.inf), "class_means_init"),
    (lambda: DataConfig(memory_limit=math.inf), "memory_limit"),
    (lambda: EvaluateConfig(memory_budget=math.nan), "memory_budget"),
])
def test_every_float_setting_must_be_finite(make, name):
    with pytest.raises(SettingError, match=f"^{name} must be a finite number") as caught:
        make()
    assert caught.value.setting == name and one_line(caught.value)


def test_values_of_the_right_type_still_pass():
    assert TrainConfig(lr=1, kl_warmup=0).lr == 1  # an int is a float
    assert ModelConfig(hidden=[16, 8], image_shape=torch.Size([1, 4, 4])).hidden == (16, 8)
    assert settings_from_json(ModelConfig, {"hidden": [16], "likelihood_scale": 1}, "c.json").hidden == (16,)
    assert DataConfig(memory_limit=None, labeled=0).labeled == 0


@pytest.mark.parametrize("flag,value", [("--lr", "inf"), ("--kl-weight", "inf"), ("--kl-warmup", "nan"),
                                        ("--z-dim", str(10**30))])
def test_the_cli_refuses_a_number_torch_cannot_take_in_one_line(flag, value, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, flag, value, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and flag in err and "_" not in err, err
    assert not captured.out and not out.exists()  # refused before the data is read


@pytest.fixture(scope="module")
def vae():
    return build_vae(ModelConfig(image_shape=(1, 2, 2), z_dim=2, hidden=(4,)))


@pytest.mark.parametrize("x,problem", [(torch.zeros(0, 4), "no examples"), (np.zeros((2, 4), np.float32), "tensor"),
                                       ([[0.0, 1.0, 0.0, 1.0]], "tensor")])
@pytest.mark.parametrize("generic", [False, True])
def test_log_likelihood_refuses_x_without_examples_or_not_a_tensor(vae, x, problem, generic):
    args = (vae.model, vae.guide, x) if generic else (vae, x)
    with pytest.raises(ValueError, match=problem) as caught:
        log_likelihood(*args, num_samples=2)
    assert "torch.as_tensor" in one_line(caught.value) or "at least one" in str(caught.value)


@pytest.mark.parametrize("n", [-1, 2.5, "3", True])
def test_sample_refuses_a_count_that_is_not_a_whole_number(vae, n):
    with pytest.raises(ValueError, match="n counts the samples") as caught:
        vae.sample(n)
    assert repr(n) in one_line(caught.value)
    assert vae.sample(0).shape == (0, 4)


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace"])
def test_values_whose_squares_overflow_are_refused_before_training(likelihood, tmp_path, capsys):
    x = np.zeros((40, 4, 4), np.float32)
    x[3, 1, 2] = 3e38
    np.save(tmp_path / "big.npy", x)
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--dataset", str(tmp_path / "big.npy"), "--likelihood", likelihood,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "3e+38" in err[-1] and "rescale" in err[-1], err  # a note of the data, then the error
    assert not out.exists()
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(4,), likelihood=likelihood))
    with pytest.raises(ValueError, match="overflow") as caught:
        vae.check_data(torch.from_numpy(x.reshape(40, -1)))
    one_line(caught.value)
