import dataclasses

import pyro
import pytest
import torch

from pyrovae import DataConfig, ModelConfig, TrainConfig, build_vae, fit, from_arrays, load_dataset
from pyrovae.inference.kl_weight import MIN_KL_WEIGHT
from pyrovae.inference.objectives import MeanFieldELBO, TraceELBO
from pyrovae.runs.rundir import RunDir


def parts_at(vae, x, weight, elbo):
    pyro.set_rng_seed(3)
    vae.zero_grad()
    parts = elbo.loss_and_parts(vae.model, vae.guide, x, kl_weight=weight)
    parts.loss.backward()
    return parts, [p.grad.clone() for p in vae.decoder.parameters()]


@pytest.mark.parametrize("elbo", [TraceELBO(), MeanFieldELBO()])
@pytest.mark.parametrize("weight", [0.25, torch.tensor(4.0)])
def test_the_weight_multiplies_exactly_the_kl_term(small_vae, binary_batch, elbo, weight):
    plain, plain_grads = parts_at(small_vae, binary_batch, 1.0, elbo)
    weighted, weighted_grads = parts_at(small_vae, binary_batch, weight, elbo)
    assert torch.allclose(weighted.recon, plain.recon) and torch.allclose(weighted.kl, plain.kl)
    assert torch.allclose(weighted.loss, plain.recon + weight * plain.kl)
    # The decoder appears only in the reconstruction term, so its gradient ignores the weight.
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain_grads, weighted_grads))


def test_the_vae_holds_no_training_state(small_vae, binary_batch):
    """kl_weight and data_size are arguments of model and guide, not attributes that fit leaves behind."""
    before = {name: value.clone() for name, value in small_vae.state_dict().items()}
    attributes = set(vars(small_vae))
    fit(small_vae, from_arrays(torch.bernoulli(torch.full((40, 4, 4), 0.4))),
        TrainConfig(epochs=1, batch_size=8, kl_weight=0.5, device="cpu"), progress=False, verbose=False)
    assert set(vars(small_vae)) == attributes
    assert not hasattr(small_vae, "kl_weight") and not hasattr(small_vae, "data_size")
    assert any(not torch.equal(before[name], value) for name, value in small_vae.state_dict().items())


def test_data_size_scales_the_minibatch_to_the_dataset(small_vae, binary_batch):
    pyro.set_rng_seed(1)
    batch = TraceELBO().differentiable_loss(small_vae.model, small_vae.guide, binary_batch)
    pyro.set_rng_seed(1)
    dataset = TraceELBO().differentiable_loss(small_vae.model, small_vae.guide, binary_batch, data_size=50)
    assert torch.allclose(dataset, batch * 50 / len(binary_batch))


def schedule(**settings):
    """The KL schedule that TrainConfig makes of its KL settings."""
    return TrainConfig(device="cpu", **settings).kl_schedule


def test_warmup_rises_linearly_to_beta():
    warmup = schedule(kl_weight=0.5, kl_warmup=2)
    assert [warmup.scheduled_weight(t) for t in (0, 0.5, 1, 2, 7)] == [MIN_KL_WEIGHT, 0.125, 0.25, 0.5, 0.5]
    assert schedule(kl_weight=2.0).scheduled_weight(0) == 2.0


def test_the_kl_settings_are_declared_once_and_make_one_schedule():
    config = TrainConfig(device="cpu", kl_weight=0.5, kl_warmup=2)
    assert config.kl_schedule is config.kl_schedule  # made once, not on every read
    assert (config.kl_schedule.kl_weight, config.kl_schedule.kl_warmup, config.kl_schedule.kl_balance) == (0.5, 2, None)
    assert "kl_schedule" not in dataclasses.asdict(config)  # config.json keeps its keys


def test_balance_is_seed_004s_update():
    balance = schedule(kl_balance=0.1)
    w = balance.initial_weight()
    assert w.item() == pytest.approx(MIN_KL_WEIGHT)
    w = balance.balance(torch.tensor(0.5), recon=torch.tensor(80.0), kl=torch.tensor(20.0))
    assert w.item() == pytest.approx(0.5 + 0.1 * (80 - 0.5 * 20))
    floored = balance.balance(torch.tensor(0.5), recon=torch.tensor(-10.0), kl=torch.tensor(20.0))
    assert floored.item() == pytest.approx(MIN_KL_WEIGHT)


@pytest.mark.parametrize("settings,match", [
    ({"kl_weight": 0.0}, "kl_weight must be positive"), ({"kl_warmup": -1}, "kl_warmup must be a non-negative"),
    ({"kl_balance": -1.0}, "kl_balance must be positive"),
    ({"kl_balance": 1e-3, "kl_warmup": 2}, "sets the weight itself; use it without kl_warmup=2"),
])
def test_bad_kl_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(device="cpu", **settings)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig())


def digits_vae():
    pyro.set_rng_seed(0)
    return build_vae(ModelConfig(image_shape=(1, 8, 8), z_dim=4, hidden=(64,)))


def test_warmup_is_logged_per_epoch_and_the_vae_is_left_unweighted(digits):
    vae = digits_vae()
    history = fit(vae, digits, TrainConfig(epochs=4, kl_weight=0.8, kl_warmup=2, device="cpu"), progress=False)
    weights = [row["kl_weight"] for row in history]
    assert 0 < weights[0] < 0.4 < weights[1] < 0.8 and weights[2:] == pytest.approx([0.8, 0.8])
    assert all(row["train_loss"] == pytest.approx(row["recon"] + row["kl_weight"] * row["kl"], rel=0.05)
               for row in history[2:])


def test_balance_moves_the_weight_and_resumes_from_the_checkpoint(digits, tmp_path):
    config = TrainConfig(epochs=2, kl_balance=1e-4, device="cpu")
    history = fit(digits_vae(), digits, config, run_dir=tmp_path, progress=False)
    assert 0 < history[0]["kl_weight"] < history[1]["kl_weight"]
    saved = RunDir(tmp_path).load_checkpoint().progress.kl_weight
    resumed = fit(digits_vae(), digits, TrainConfig(epochs=3, kl_balance=1e-4, device="cpu"), run_dir=tmp_path,
                  resume=True, progress=False)
    # The third epoch starts from the saved weight, not from zero again.
    assert resumed[0]["kl_weight"] > saved.item() > history[0]["kl_weight"]
