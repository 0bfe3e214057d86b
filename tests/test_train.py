import json

import pyro
import pytest
import torch

from pyrovae import DataConfig, ModelConfig, TrainConfig, build_vae, fit, from_arrays, load_dataset, load_run
from pyrovae.inference.evaluate import negative_elbo
from pyrovae.runs.rundir import CheckpointError, RunDir


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(dataset="digits", binarize="dynamic"))


def digits_vae(seed=0, **overrides):
    pyro.set_rng_seed(seed)
    settings = dict(image_shape=(1, 8, 8), z_dim=4, hidden=(64,)) | overrides
    return build_vae(ModelConfig(**settings))


@pytest.mark.parametrize("elbo", ["trace", "meanfield"])
def test_short_training_lowers_validation_negative_elbo(digits, elbo):
    vae = digits_vae()
    before = negative_elbo(vae, digits.val.x).mean().item()
    history = fit(vae, digits, TrainConfig(epochs=20, batch_size=64, lr=3e-3, elbo=elbo, device="cpu"),
                  progress=False)
    after = history[-1]["val_neg_elbo"]
    # An untrained decoder pays about 64 * log 2 = 44 nats; a trained one well under 32.
    assert before > 40
    assert after < 0.75 * before
    assert [row["epoch"] for row in history] == list(range(1, 21))
    assert all(row["epoch_seconds"] > 0 and row["train_loss"] > 0 for row in history)


def test_run_directory_files_and_checkpoint_round_trip(digits, tmp_path):
    vae = digits_vae()
    fit(vae, digits, TrainConfig(epochs=2, device="cpu"), run_dir=tmp_path, progress=False)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "checkpoint.pt", "metrics.jsonl"}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    keys = {"epoch", "train_loss", "recon", "kl", "kl_weight", "skipped_batches", "val_neg_elbo", "epoch_seconds"}
    assert [set(row) for row in rows] == [keys] * 2
    assert all(row["train_loss"] == pytest.approx(row["recon"] + row["kl"], rel=1e-5) for row in rows)

    run = load_run(tmp_path)
    assert run.config["train"]["epochs"] == 2 and run.config["data"]["dataset"] == "digits"
    assert run.metrics == rows and not run.vae.training
    vae.eval()
    x = digits.test.x[:10]
    assert torch.equal(run.vae.reconstruct(x), vae.reconstruct(x))
    assert all(torch.equal(a, b) for a, b in zip(run.vae.encode(x), vae.encode(x)))
    # The dataset as configured: the same splits, binarized the same way.
    assert run.data.name == "digits" and run.data.dynamic_binarization and run.data.config == digits.config
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(run.data, name).x, getattr(digits, name).x), name
    assert load_run(tmp_path, data=False).data is None


def test_load_run_refuses_what_is_not_a_whole_run_in_one_line(digits, tmp_path):
    with pytest.raises(CheckpointError, match="config.json does not exist; is .* a pyrovae run directory"):
        load_run(tmp_path)  # an empty folder
    fit(digits_vae(), digits, TrainConfig(epochs=1, device="cpu"), run_dir=tmp_path / "run", progress=False)
    with (tmp_path / "run" / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"epoch": 2, "train_lo')  # a line cut short
    with pytest.raises(CheckpointError, match="metrics.jsonl line 2 is not JSON"):
        load_run(tmp_path / "run")

    arrays = from_arrays(torch.bernoulli(torch.full((40, 4, 4), 0.3)), binarize="static")
    fit(build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,))), arrays,
        TrainConfig(epochs=1, device="cpu"), run_dir=tmp_path / "arrays", progress=False)
    with pytest.raises(CheckpointError, match="no data settings.*data=False"):
        load_run(tmp_path / "arrays")
    assert load_run(tmp_path / "arrays", data=False).vae.x_dim == 16


def test_resume_continues_the_epoch_count_and_reproduces_an_uninterrupted_run(digits, tmp_path):
    straight = digits_vae()
    fit(straight, digits, TrainConfig(epochs=4, device="cpu"), run_dir=tmp_path / "straight", progress=False)

    interrupted = digits_vae()
    fit(interrupted, digits, TrainConfig(epochs=2, device="cpu"), run_dir=tmp_path / "split", progress=False)
    resumed = digits_vae(seed=123)  # whatever it starts from, the checkpoint decides
    history = fit(resumed, digits, TrainConfig(epochs=4, device="cpu"), run_dir=tmp_path / "split",
                  resume=True, progress=False)

    assert [row["epoch"] for row in history] == [3, 4]
    assert [row["epoch"] for row in RunDir(tmp_path / "split").read_metrics()] == [1, 2, 3, 4]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_training_refuses_to_overwrite_a_run(digits, tmp_path):
    fit(digits_vae(), digits, TrainConfig(epochs=1, device="cpu"), run_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="resume=True"):
        fit(digits_vae(), digits, TrainConfig(epochs=1, device="cpu"), run_dir=tmp_path, progress=False)


@pytest.mark.parametrize("overrides,binarize,match", [
    (dict(image_shape=(1, 4, 4)), "dynamic", r"shape \(\d+, 64\).*\(N, 16\)"),
    ({}, "none", "grayscale"),
])
def test_bad_input_fails_before_any_training(tmp_path, overrides, binarize, match):
    data = load_dataset(DataConfig(binarize=binarize))
    vae = digits_vae(**overrides)
    before = [p.clone() for p in vae.parameters()]
    with pytest.raises(ValueError, match=match):
        fit(vae, data, TrainConfig(epochs=1, device="cpu"), run_dir=tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))


def test_custom_tensors_train_through_the_python_api():
    images = torch.bernoulli(torch.full((64, 4, 4), 0.3))
    data = from_arrays(images, binarize="static")
    vae = build_vae(ModelConfig(image_shape=data.image_shape, z_dim=2, hidden=(8,)))
    history = fit(vae, data, TrainConfig(epochs=2, batch_size=16, device="cpu"), progress=False)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in history)


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"PK\x03\x04garbage"])
def test_corrupt_checkpoint_is_a_clear_error(digits, tmp_path, content):
    fit(digits_vae(), digits, TrainConfig(epochs=1, device="cpu"), run_dir=tmp_path, progress=False)
    (tmp_path / "checkpoint.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable pyrovae checkpoint"):
        load_run(tmp_path)


@pytest.mark.slow
def test_compiled_nets_train_like_the_eager_ones(digits):
    """--compile (torch.compile of encoder and decoder) changes the speed, not the numbers (to float error)."""
    eager, compiled = digits_vae(), digits_vae()
    fit(eager, digits, TrainConfig(epochs=1, device="cpu"), progress=False)
    fit(compiled, digits, TrainConfig(epochs=1, device="cpu", compile=True), progress=False)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-4), name
    assert "forward" not in vars(compiled.encoder) and "forward" not in vars(compiled.decoder)  # as they were


def test_fit_leaves_global_state_as_it_found_it(digits, monkeypatch):
    """The TF32 flags are set for the call only, and compile=True compiles the nets for the call only."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda function: compiled.append(function) or function)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    vae = digits_vae()
    fit(vae, digits, TrainConfig(epochs=1, device="cpu", tf32=True, compile=True), progress=False, verbose=False)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert len(compiled) == 2 and "forward" not in vars(vae.encoder) and "forward" not in vars(vae.decoder)
