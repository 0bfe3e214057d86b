import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pyrovae import VAE, ModelConfig, TrainConfig, build_vae, fit
from pyrovae.cli import build_parser, commands, main
from pyrovae.runs.rundir import RunDir
from pyrovae.runs.writer import RunWriter


def run_cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "pyrovae", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = run_cli("train", "--epochs", "3", "--z-dim", "2", "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("epoch ")] == ["1", "2", "3"]
    assert "epoch 1/3" not in result.stderr + result.stdout  # --no-progress: the epoch lines without the bar
    return out


def test_train_writes_the_run_directory(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "checkpoint.pt", "metrics.jsonl", "reconstructions.png", "samples.png"} <= names
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["z_dim"] == 2 and config["data"]["dataset"] == "digits"
    assert config["train"]["epochs"] == 3 and config["train"]["seed"] == 0
    for picture in ("reconstructions.png", "samples.png"):
        with Image.open(trained_run / picture) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_evaluate_writes_eval_json(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--device", "cpu", "--num-samples", "200"]) == 0
    result = json.loads((trained_run / "eval.json").read_text())
    assert set(result) == {"neg_elbo", "neg_elbo_stderr", "split", "num_examples", "nll", "nll_stderr",
                           "num_samples", "bits_per_dim"}
    assert result["split"] == "test" and result["num_examples"] == 300 and result["num_samples"] == 200
    assert 0 < result["neg_elbo_stderr"] < result["neg_elbo"] < 64 * np.log(2) + 5
    assert 0 < result["nll"] < result["neg_elbo"] and 0 < result["nll_stderr"] < 1
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (64 * np.log(2)))
    out = capsys.readouterr().out
    assert "negative ELBO" in out and "NLL, K=200" in out and "bits/dim" in out


def test_evaluate_elbo_only_skips_the_log_likelihood(trained_run):
    assert main(["evaluate", str(trained_run), "--elbo-only"]) == 0
    assert "nll" not in json.loads((trained_run / "eval.json").read_text())


def test_sample_writes_png_and_npy(trained_run, tmp_path):
    assert main(["sample", str(trained_run), "--n", "7", "--out", str(tmp_path / "s.npy")]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (7, 64) and samples.min() >= 0 and samples.max() <= 1
    assert main(["sample", str(trained_run), "--n", "7", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_many_samples_are_written_in_chunks(trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(commands, "SAMPLE_CHUNK", 1000)
    drawn = []
    monkeypatch.setattr(VAE, "sample", lambda self, n, y=None: drawn.append(n) or torch.rand(n, self.x_dim))
    assert main(["sample", str(trained_run), "--n", "2500", "--out", str(tmp_path / "many.npy")]) == 0
    assert drawn == [1000, 1000, 500] and np.load(tmp_path / "many.npy").shape == (2500, 64)


def test_resume_from_the_cli_keeps_counting_and_moves_the_old_eval_json_aside(trained_run, capsys):
    (trained_run / "eval.json").write_text('{"nll": 80.0}')
    assert main(["train", "--out", str(trained_run), "--resume", "--epochs", "4", "--no-progress"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
    assert not (trained_run / "eval.json").exists()
    assert (trained_run / "eval.stale.json").read_text() == '{"nll": 80.0}'
    assert capsys.readouterr().err.count("eval.stale.json") == 1


def test_resume_in_python_moves_eval_json_aside_once(tmp_path, caplog):
    writer = RunWriter(RunDir(tmp_path))
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "eval.json").write_text("{}")
    writer.prepare(resume=True)
    assert not (tmp_path / "eval.json").exists() and (tmp_path / "eval.stale.json").is_file()
    assert f"moved {tmp_path / 'eval.json'} to eval.stale.json" in caplog.text
    caplog.clear()
    writer.prepare(resume=True)
    assert caplog.text == ""
    (tmp_path / "eval.json").write_text("{}")
    writer.prepare(overwrite=True)  # a fresh start deletes both, as every file of the old run
    assert not any(tmp_path.iterdir()) and caplog.text == ""


def test_missing_dataset_offline_is_one_paragraph_not_a_traceback(tmp_path):
    result = run_cli("train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "1",
                     "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "train-images-idx3-ubyte" in result.stderr and "--data-dir" in result.stderr
    assert not (tmp_path / "run").exists()


def test_help_documents_every_flag_of_the_issues():
    commands = build_parser().commands
    train_help = commands["train"].format_help()
    for flag in ["--dataset", "--data-dir", "--binarize", "--z-dim", "--hidden", "--net", "--elbo",
                 "--epochs", "--batch-size", "--lr", "--device", "--seed", "--out", "--resume",
                 "--prior", "--prior-components", "--likelihood", "--likelihood-scale", "--learn-scale",
                 "--conditional", "--decoder-conditioning", "--kl-weight", "--kl-warmup", "--kl-balance",
                 "--particles"]:
        assert flag in train_help
    assert "--num-samples" in commands["evaluate"].format_help()
    assert "--class" in commands["sample"].format_help()


def test_class_needs_a_conditional_model(trained_run, capsys):
    assert main(["sample", str(trained_run), "--class", "3", "--out", "x.png"]) == 2
    assert "--conditional" in capsys.readouterr().err


PAIR_LIKELIHOODS = [["--likelihood", "bernoulli"], ["--likelihood", "continuous-bernoulli"],
                    ["--likelihood", "gaussian"], ["--likelihood", "gaussian", "--learn-scale"],
                    ["--likelihood", "laplace", "--learn-scale", "decoder"]]


@pytest.mark.parametrize("prior", ["standard", "class-means", "mixture", "vamp"])
@pytest.mark.parametrize("likelihood", PAIR_LIKELIHOODS,
                         ids=["bernoulli", "continuous-bernoulli", "gaussian", "gaussian-pixel", "laplace-decoder"])
def test_every_prior_and_likelihood_trains_from_the_cli(tmp_path, prior, likelihood):
    conditional = ["--conditional"] if prior == "class-means" else []
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--prior", prior, "--prior-components", "3", *likelihood, *conditional,
                 "--out", str(out), "--no-progress"]) == 0
    row = json.loads((out / "metrics.jsonl").read_text())
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_neg_elbo"])
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["prior"] == prior and config["model"]["likelihood"] == likelihood[1]
    # The saved settings rebuild the same model for evaluate.
    assert main(["evaluate", str(out), "--num-samples", "10", "--no-progress"]) == 0


def test_quiet_prints_the_last_line_alone_and_no_progress_bar(trained_run, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--hidden", "16", "--z-dim", "2", "--threads", "1", "--device", "cpu",
                 "--batch-size", "5000", "--out", str(out), "--quiet"]) == 0  # the batch note is left out too
    said = capsys.readouterr()
    assert said.out.startswith(f"done: {out}") and said.out.count("\n") == 1 and said.err == ""
    assert main(["evaluate", str(trained_run), "--elbo-only", "--out", str(tmp_path / "e.json"), "--quiet"]) == 0
    said = capsys.readouterr()
    assert said.out.count("\n") == 1 and str(tmp_path / "e.json") in said.out and said.err == ""


@pytest.mark.parametrize("command", ["evaluate", "sample", "plot"])
def test_threads_are_checked_on_every_command(trained_run, capsys, command):
    assert main([command, str(trained_run), "--threads", "0", "--out", "x.png"]) == 2
    assert "error: --threads must be positive, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("progress", [True, False])
def test_a_progress_bar_thins_the_epoch_lines_to_about_ten(capsys, progress):
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,)))
    fit(vae, torch.bernoulli(torch.full((40, 16), 0.5)), TrainConfig(epochs=25, device="cpu"), progress=progress)
    shown = [int(line.split()[1]) for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert shown[-1] == 25 and shown == sorted(set(shown))
    assert 10 <= len(shown) <= 13 if progress else shown == list(range(1, 26))
