"""Sizes that cannot fit are refused before any work; memory that runs out in evaluation is retried smaller.

Out-of-memory in training, and resuming after it, is tested with the other faults in
``test_faults.py``.
"""

import json
import logging
import re
import subprocess
import sys

import pytest
import torch

from pyrovae import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    build_vae,
    fit,
    from_arrays,
    load_dataset,
    log_likelihood,
)
from pyrovae.cli import main
from pyrovae.inference.importance import ImportanceSampler
from pyrovae.memory import OutOfMemory, TooBig, is_out_of_memory, parameter_bytes
from pyrovae.model import size
from pyrovae.model.build import flow_bytes
from pyrovae.training import preflight
from pyrovae.training.preflight import check_model_fits, model_bytes

QUICK = ["--epochs", "1", "--hidden", "16", "--z-dim", "2", "--threads", "1", "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("flags,named", [
    (["--z-dim", "1000000000"], "--z-dim 1000000000 needs about [\\d.]+[GT]B for the weights, their gradients and "
                                "Adam's moments; this machine has [\\d.]+[GMT]B free; lower --z-dim"),
    (["--hidden", "2000000000"], "--hidden 2000000000 needs about [\\d.]+[GT]B .*; lower --hidden"),
    (["--prior", "mixture", "--prior-components", "1000000000"],
     "--prior-components 1000000000 needs about [\\d.]+GB .*; lower --prior-components"),
    (["--particles", "100000000"], "--particles 100000000 needs about [\\d.]+[GT]B per step at --batch-size 128; "
                                   "this machine has [\\d.]+[GMT]B free; lower --particles or --batch-size"),
    (["--guide", "iaf", "--z-dim", "100000000"], "--z-dim 100000000 needs about [\\d.]+EB for the weights, "
                                                  ".*; lower --z-dim"),
    (["--image-size", "100000"], "--image-size 100000 makes 1497 images of [\\d.]+GB each, about [\\d.]+TB in all; "
                                 "this machine has [\\d.]+[GMT]B free; lower --image-size"),
], ids=["z-dim", "hidden", "prior-components", "particles", "flow-z-dim", "image-size"])
def test_an_oversized_setting_is_refused_in_one_line_before_the_run_directory_exists(tmp_path, capsys, flags, named):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(f"pyrovae train: error: {named}\n", err), err
    assert not out.exists() and not (tmp_path / "run.lock").exists()


def test_a_refused_overwrite_leaves_the_old_run_as_it_was(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(out)]) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert main(["train", *QUICK, "--out", str(out), "--overwrite", "--particles", "100000000"]) == 2
    assert "lower --particles" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


@pytest.mark.parametrize("config", [
    ModelConfig(), ModelConfig(net="conv", z_dim=5), ModelConfig(prior="vamp", prior_components=7),
    ModelConfig(prior="mixture", likelihood="gaussian", learn_scale="decoder"),
    ModelConfig(prior="class-means", num_classes=4, label_guide="classifier"),
])
def test_the_parameters_are_counted_without_building_the_model(config):
    assert model_bytes(config) == 4 * parameter_bytes(build_vae(config))  # weights, gradients, Adam's moments


@pytest.mark.parametrize("config", [ModelConfig(guide="iaf", z_dim=7), ModelConfig(guide="spline", z_dim=5),
                                    ModelConfig(guide="iaf", z_dim=4, latent_layers=2, z1_dim=9, flow_layers=3)])
def test_a_flow_guides_networks_are_counted_by_extrapolation_exactly(config):
    vae = build_vae(config)
    posteriors = [vae.posterior, getattr(vae, "upper_posterior", torch.nn.Identity())]
    assert flow_bytes(config) == sum(parameter_bytes(posterior) for posterior in posteriors)


@pytest.fixture
def images():
    x = (torch.rand(600, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    return from_arrays(x, torch.arange(600) % 3)


def test_the_refusal_names_the_batch_size_when_it_is_what_grew(images, monkeypatch):
    vae = build_vae(ModelConfig(image_shape=(1, 8, 8), hidden=(32,)))
    small = TrainConfig(batch_size=8)
    adam_and_step = 2 * parameter_bytes(vae) + preflight.step_bytes(vae, images, small, 8)
    monkeypatch.setattr(preflight, "free_bytes", lambda device: adam_and_step * 1.5)
    preflight.check_step_fits(vae, images, small)  # fits
    with pytest.raises(TooBig, match=r"^batch_size=512 needs about [\d.]+[kMG]B per step; this machine has [\d.]+"
                                     r"[kMG]B free; lower batch_size$") as refused:
        preflight.check_step_fits(vae, images, TrainConfig(batch_size=512))
    assert refused.value.setting == "batch_size"
    with pytest.raises(TooBig, match=r"^particles=64 needs .* at batch_size=8; .*; lower particles or batch_size$"):
        preflight.check_step_fits(vae, images, TrainConfig(batch_size=8, particles=64))
    conditional = build_vae(ModelConfig(image_shape=(1, 8, 8), hidden=(32,), prior="class-means", num_classes=3))
    with pytest.raises(TooBig, match=r"^batch_size=512 needs"):
        preflight.check_step_fits(conditional, images, TrainConfig(batch_size=512))


def test_a_model_refused_by_formula_names_its_largest_setting(monkeypatch):
    monkeypatch.setattr(size, "free_bytes", lambda device: 10**9)
    check_model_fits(ModelConfig(hidden=(400, 400)), torch.device("cpu"))
    with pytest.raises(TooBig, match=r"^hidden=300000 needs about [\d.]+GB .* has 1\.00GB free; lower hidden$"):
        check_model_fits(ModelConfig(hidden=(400, 300_000), z_dim=20), torch.device("cpu"))
    conditional = dict(prior="class-means", num_classes=10, label_guide="classifier")
    with pytest.raises(TooBig, match=r"^z_dim=100000 needs .*; lower z_dim$"):
        check_model_fits(ModelConfig(z_dim=100_000, **conditional), torch.device("cpu"))


def test_the_probe_changes_no_parameter_and_no_random_stream(images):
    vae = build_vae(ModelConfig(image_shape=(1, 8, 8), hidden=(32,)))
    weights = {name: value.clone() for name, value in vae.state_dict().items()}
    state = torch.get_rng_state()
    preflight.check_step_fits(vae, images, TrainConfig(particles=3))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(value, weights[name]) for name, value in vae.state_dict().items())
    assert all(p.grad is None for p in vae.parameters())


def test_a_batch_larger_than_the_training_set_is_said_in_one_line(tmp_path, capsys):
    assert main(["train", *QUICK, "--out", str(tmp_path / "run"), "--batch-size", "1000000000"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert notes == ["pyrovae train: note: --batch-size 1000000000 is larger than the training set (1347 images): "
                     "every step trains on all of them, one step per epoch"]


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory"), MemoryError(),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                                "3200000000000 bytes. Error code 12 (Cannot allocate memory)")])
def test_allocation_failures_are_recognized(error):
    assert is_out_of_memory(error)


def test_other_errors_are_not_taken_for_allocation_failures():
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


def failing_above(monkeypatch, most_draws):
    """Make every chunk of more than ``most_draws`` importance samples run out of memory; return the chunks tried."""
    real, tried = ImportanceSampler.log_weights, []

    def log_weights(self, part, num_particles=1):
        draws = num_particles * len(self.x[part])
        tried.append(draws)
        if draws > most_draws:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(self, part, num_particles)

    monkeypatch.setattr(ImportanceSampler, "log_weights", log_weights)
    return tried


def test_the_log_likelihood_halves_its_chunk_when_memory_runs_out(images, monkeypatch, caplog):
    vae = build_vae(ModelConfig(image_shape=(1, 8, 8), hidden=(32,)))
    x = images.test.x[:40]
    torch.manual_seed(0)
    expected = log_likelihood(vae, x, num_samples=400)
    tried = failing_above(monkeypatch, most_draws=150)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="pyrovae"):
        retried = log_likelihood(vae, x, num_samples=400)
    assert max(tried) > 150 and any(draws <= 150 for draws in tried)
    assert "out of memory with chunks of 40 images x 400 samples; trying 20 x 400" in caplog.text
    assert retried.shape == expected.shape and torch.isfinite(retried).all()
    assert abs(retried.mean() - expected.mean()) < 0.3  # other draws, the same estimate


def test_evaluate_gives_up_in_one_line_when_one_sample_does_not_fit(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(out)]) == 0
    failing_above(monkeypatch, most_draws=0)
    assert main(["evaluate", str(out), "--num-samples", "10", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("pyrovae evaluate: error: out of memory with a sample or two of an image or two; free "
                        "memory on the device, or evaluate on another device\n"), err
    assert "Traceback" not in err and not (out / "eval.json").exists()


def test_evaluate_says_when_the_samples_of_one_image_take_several_chunks(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--num-samples", "1000", "--limit", "4", "--memory-budget", "0.0001",
                 "--no-progress"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert len(notes) == 1 and re.fullmatch(r"pyrovae evaluate: note: --num-samples 1000 samples of one image exceed "
                                            r"one chunk of 0 MiB: each image's are drawn in \d+ chunks of \d+ and "
                                            r"combined exactly", notes[0]), notes


PEAK_OF_TRAINING = r"""
import json, re, sys
from pathlib import Path
import psutil, torch
from pyrovae import ModelConfig, TrainConfig, build_vae, fit, from_arrays
from pyrovae.training import preflight
from pyrovae.memory import parameter_bytes

torch.set_num_threads(1)
net, elbo, particles, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
x = (torch.rand(2 * batch, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5).float()
data = from_arrays(x, torch.zeros(len(x), dtype=torch.long))
vae = build_vae(ModelConfig(net=net, z_dim=50))
config = TrainConfig(epochs=1, batch_size=batch, elbo=elbo, particles=particles)
estimate = preflight.ADAM_MOMENTS * parameter_bytes(vae) + preflight.step_bytes(vae, data, config, batch)
before = psutil.Process().memory_info().rss
fit(vae, data, config, progress=False, verbose=False)
# VmHWM, this process's peak RSS (ru_maxrss would also count the parent's pages forked before exec)
peak = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024
print(json.dumps({"estimate": estimate, "measured": peak - before}))
"""


@pytest.mark.slow  # three training processes: 8 s
@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak RSS from /proc")
def test_the_estimate_is_within_a_factor_of_two_of_the_measured_peak():
    configs = {"mlp": ("mlp", "trace", 1, 2048), "conv": ("conv", "trace", 1, 256),
               "iwae k=50": ("mlp", "iwae", 50, 128)}
    runs = {name: subprocess.Popen([sys.executable, "-c", PEAK_OF_TRAINING, *map(str, args)], text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name, args in configs.items()}
    for name, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        sizes = json.loads(out)
        assert sizes["measured"] > 30e6, sizes  # large enough for the interpreter's own noise not to matter
        assert 0.5 < sizes["estimate"] / sizes["measured"] < 2, (name, sizes)


def test_fit_refuses_before_creating_its_run_directory(tmp_path, monkeypatch):
    data = load_dataset(DataConfig())
    vae = build_vae(ModelConfig(image_shape=data.image_shape, hidden=(16,)))
    monkeypatch.setattr(preflight, "free_bytes", lambda device: 1000)
    with pytest.raises(TooBig):
        fit(vae, data, TrainConfig(epochs=1), run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_out_of_memory_is_a_memory_error_that_names_what_to_lower():
    error = OutOfMemory("out of memory at epoch 1", ("batch_size",))
    assert isinstance(error, MemoryError) and error.settings == ("batch_size",)
