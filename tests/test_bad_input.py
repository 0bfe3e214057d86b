"""Bad input is caught at the door: every entry point, CLI and Python, names the problem and the fix.

Each row is one mistake a user can make. CLI rows must end with exit status 2 and a
one-line message (no traceback), and leave the existing runs' files untouched; Python
rows must raise the named error type with the message.
"""

import hashlib
import re

import pytest
import torch

from pyrovae import ModelConfig, TrainConfig, build_vae, fit
from pyrovae.cli import main
from pyrovae.data.datasets import DataConfig, from_arrays
from pyrovae.data.idx import IDX_FILES
from pyrovae.inference.evaluate import evaluation_report, log_likelihood, negative_elbo
from pyrovae.report.plots import samples_figure
from pyrovae.runs.rundir import CheckpointError, RunDir
from pyrovae.settings import settings_from_json

NO_GPU = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An unconditional and a conditional digits run, an empty folder, a plain file, IDX files of garbage."""
    root = tmp_path_factory.mktemp("runs")
    common = ["--epochs", "1", "--hidden", "16", "--z-dim", "2", "--no-progress", "--device", "cpu"]
    assert main(["train", *common, "--out", str(root / "run")]) == 0
    assert main(["train", *common, "--conditional", "--out", str(root / "crun")]) == 0
    (root / "empty").mkdir()
    (root / "file").write_text("not a folder")
    (root / "garbled-idx").mkdir()
    for name in IDX_FILES.values():
        (root / "garbled-idx" / name).write_bytes(b"<html>a proxy's login page</html>")
    return root


def run_files_digest(root):
    """A hash of every file in the two runs, to show a refused command changed nothing."""
    digest = hashlib.sha256()
    for path in sorted((root / "run").iterdir()) + sorted((root / "crun").iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


CLI_CASES = [
    # train: optimization settings
    (["train", "--epochs", "0"], "--epochs must be positive, got 0"),
    (["train", "--estimator", "dreg"], "--estimator dreg estimates the gradient of the iwae bound; add --elbo iwae"),
    # train: posterior families and stochastic layers
    (["train", "--guide", "iaf", "--flow-layers", "0"], "--flow-layers .* must be at least 1, got 0"),
    (["train", "--latent-layers", "3"], "--latent-layers must be 1 or 2, got 3"),
    (["train", "--latent-layers", "2", "--prior", "vamp"], "with --latent-layers 2 choose another prior"),
    (["train", "--batch-size", "-5"], "--batch-size must be positive, got -5"),
    (["train", "--particles", "0"], "--particles must be positive, got 0"),
    (["train", "--lr", "0"], "--lr must be positive"),
    (["train", "--lr", "nan"], "--lr must be a finite number"),
    (["train", "--kl-weight", "-1"], "--kl-weight must be positive"),
    (["train", "--kl-warmup", "-2"], "--kl-warmup must be a non-negative"),
    (["train", "--kl-balance", "1e-4", "--kl-warmup", "3"], "--kl-balance sets the weight itself.*without "
                                                            "--kl-warmup 3"),
    (["train", "--skip-nonfinite", "-1"], "--skip-nonfinite counts batches and cannot be negative"),
    (["train", "--threads", "0"], "--threads must be positive"),
    (["train", "--tensorboard-every", "0"], "--tensorboard-every must be positive, got 0"),
    # train: model settings
    (["train", "--z-dim", "0"], "--z-dim must be at least 1"),
    (["train", "--hidden", "16", "0"], "--hidden must hold positive layer sizes"),
    (["train", "--prior", "mixture", "--prior-components", "0"], "--prior-components .* at least 1"),
    (["train", "--likelihood", "gaussian", "--likelihood-scale", "0"], "--likelihood-scale must be a positive"),
    (["train", "--learn-scale", "--likelihood", "bernoulli"], "--learn-scale pixel needs the gaussian, laplace "
                                                              "or discretized-logistic likelihood.*--likelihood "
                                                              "gaussian"),
    (["train", "--conditional", "--prior", "mixture"], "--decoder-conditioning"),
    (["train", "--likelihood", "bernoulli", "--binarize", "none", "--kl-weight", "0"], "must be positive"),
    # train: data
    (["train", "--val-fraction", "1.5"], "--val-fraction must lie strictly between 0 and 1"),
    (["train", "--dataset", "digits", "--data-dir", "{root}/empty"], "bundled with scikit-learn.*drop --data-dir "
                                                                     "DIR, .*--dataset mnist"),
    (["train", "--dataset", "mnist", "--data-dir", "{root}/empty", "--no-download"], "train-images-idx3-ubyte"),
    (["train", "--dataset", "mnist", "--data-dir", "{root}/file", "--no-download"], "files were not found"),
    (["train", "--dataset", "mnist", "--data-dir", "{root}/garbled-idx"], "not an IDX file.*download it again"),
    # train: device and run directory
    pytest.param(["train", "--device", "cuda"], "no CUDA GPU; use --device cpu",
                 marks=pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")),
    (["train", "--out", "{root}/run"], "already holds a run; add --resume .* --overwrite"),
    (["train", "--out", "{root}/run", "--resume", "--overwrite"], "pass one of them"),
    (["train", "--resume"], "--resume needs --out"),
    (["train", "--out", "{root}/empty", "--resume"], "--resume found no checkpoint.pt.*without --resume "
                                                      r"\(add --overwrite"),
    (["train", "--out", "{root}/file"], "--out .* is a file, not a folder"),
    (["train", "--out", "{root}/file/run"], "--out .* which is a file"),
    # evaluate
    (["evaluate", "{root}/run", "--num-samples", "0"], "--num-samples must be positive"),
    (["evaluate", "{root}/run", "--num-samples", "-3"], "--num-samples must be positive"),
    (["evaluate", "{root}/run", "--batch-size", "0"], "--batch-size must be positive"),
    (["evaluate", "{root}/run", "--limit", "0"], "--limit must be positive"),
    (["evaluate", "{root}/run", "--memory-budget", "0"], "--memory-budget must be positive"),
    pytest.param(["evaluate", "{root}/run", "--device", "cuda"], "no CUDA GPU",
                 marks=pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")),
    (["evaluate", "{root}/nonexistent"], "config.json does not exist"),
    (["evaluate", "{root}/empty"], "config.json does not exist"),
    # sample
    (["sample", "{root}/run", "--n", "0", "--out", "{root}/s.png"], "--n must be positive"),
    (["sample", "{root}/run", "--out", "{root}/s.gif"], r"\.png.*\.npy"),
    (["sample", "{root}/run", "--n", "5000", "--out", "{root}/s.png"], "too many images.*\\.npy"),
    (["sample", "{root}/run", "--out", "{root}/missing/s.png"], "does not exist; create it"),
    (["sample", "{root}/run", "--class", "3", "--out", "{root}/s.png"], "needs a conditional model"),
    (["sample", "{root}/crun", "--class", "10", "--out", "{root}/s.png"], r"must lie in \[0, 10\)"),
    (["sample", "{root}/crun", "--class", "-1", "--out", "{root}/s.png"], r"must lie in \[0, 10\)"),
    # plot
    (["plot", "{root}/nonexistent"], "config.json does not exist"),
    pytest.param(["plot", "{root}/run", "--device", "cuda"], "no CUDA GPU",
                 marks=pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")),
]


@pytest.mark.parametrize("argv,message", CLI_CASES)
def test_cli_refuses_bad_input_with_one_line_and_exit_2(runs, argv, message, capsys, monkeypatch):
    monkeypatch.chdir(runs)  # where a default runs/<timestamp> would go
    before = run_files_digest(runs)
    argv = [arg.format(root=runs) for arg in argv]
    if argv[0] == "train":
        argv += ["--epochs", "1", "--no-progress"] if "--epochs" not in argv else ["--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert err.startswith(f"pyrovae {argv[0]}: error: ") and err.count("\n") == 1  # one line, no traceback
    assert run_files_digest(runs) == before


@pytest.fixture(scope="module")
def vaes():
    torch.manual_seed(0)
    plain = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,)))
    conditional = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,), prior="class-means",
                                        num_classes=3))
    return {"plain": plain, "conditional": conditional}


X = torch.bernoulli(torch.full((5, 16), 0.5))
NAN_X = X.clone()
NAN_X[2, 3] = float("nan")
LABELS = torch.tensor([0, 1, 2, 0, 1])

PYTHON_CASES = [
    # data against the model
    ("wrong width", lambda v: negative_elbo(v["plain"], torch.zeros(5, 15)), ValueError, r"expects \(N, 16\)"),
    ("images not flattened", lambda v: negative_elbo(v["plain"], torch.zeros(5, 4, 4)), ValueError, "reshape"),
    ("integer pixels", lambda v: negative_elbo(v["plain"], X.long()), ValueError, "floating-point"),
    ("NaN pixel", lambda v: log_likelihood(v["plain"], NAN_X, num_samples=2), ValueError, "NaN"),
    ("pixel above 1", lambda v: negative_elbo(v["plain"], X * 2), ValueError, r"needs pixels in \[0, 1\]"),
    ("grayscale for Bernoulli", lambda v: negative_elbo(v["plain"], X * 0.5), ValueError, "binarize"),
    # labels
    ("conditional without labels", lambda v: negative_elbo(v["conditional"], X), ValueError, "needs labels y"),
    ("label out of range", lambda v: negative_elbo(v["conditional"], X, LABELS + 1), ValueError,
     r"must lie in \[0, 3\)"),
    ("float labels", lambda v: negative_elbo(v["conditional"], X, LABELS.float()), ValueError, "integer tensor"),
    ("labels of the wrong length", lambda v: negative_elbo(v["conditional"], X, LABELS[:3]), ValueError,
     r"labels of shape \(5,\)"),
    ("sample of a missing class", lambda v: v["conditional"].sample(4, 3), ValueError, r"\[0, 3\)"),
    # estimator settings
    ("zero importance samples", lambda v: log_likelihood(v["plain"], X, num_samples=0), ValueError,
     "at least one sample"),
    ("zero memory budget", lambda v: log_likelihood(v["plain"], X, memory_budget=0), ValueError, "memory budget"),
    ("report with K = 0", lambda v: evaluation_report(v["plain"], X, num_samples=0), ValueError, "at least 1"),
    ("ELBO batch of 0", lambda v: negative_elbo(v["plain"], X, batch_size=0), ValueError, "must be positive"),
    ("empty sample grid", lambda v: samples_figure(v["plain"], (1, 4, 4), n=0), ValueError, "1 to 1024"),
    # settings
    ("epochs 0", lambda v: TrainConfig(epochs=0), ValueError, "must be positive"),
    ("unknown device", lambda v: TrainConfig(device="tpu"), ValueError, "choose one of auto, cpu, cuda"),
    ("unknown elbo", lambda v: TrainConfig(elbo="renyi"), ValueError, "choose one of trace"),
    ("unknown prior", lambda v: ModelConfig(prior="flow"), ValueError, "unknown prior 'flow'"),
    ("unknown likelihood", lambda v: ModelConfig(likelihood="poisson"), ValueError, "unknown likelihood"),
    ("two-number image shape", lambda v: ModelConfig(image_shape=(28, 28)), ValueError, "three positive sizes"),
    ("conditional without classes", lambda v: ModelConfig(prior="class-means"), ValueError, "num_classes >= 2"),
    ("unknown dataset", lambda v: DataConfig(dataset="cifar"), ValueError, "unknown dataset"),
    ("unknown binarization", lambda v: DataConfig(binarize="otsu"), ValueError, "unknown binarize 'otsu'"),
    ("JSON with an unknown key", lambda v: settings_from_json(ModelConfig, {"zdim": 2}, "c.json"), ValueError,
     "unknown key.*'zdim'"),
    ("JSON with a string number", lambda v: settings_from_json(ModelConfig, {"z_dim": "2"}, "c.json"), ValueError,
     "z_dim must be int"),
    ("JSON with a bool for an int", lambda v: settings_from_json(TrainConfig, {"epochs": True}, "c.json"),
     ValueError, "epochs must be int"),
    # arrays handed to the data layer
    ("NaN in arrays", lambda v: from_arrays(NAN_X), ValueError, "NaN"),
    ("uint8 range in arrays", lambda v: fit(v["plain"], from_arrays(X * 255), TrainConfig(epochs=1, device="cpu"),
                                            progress=False), ValueError, "divide uint8 pixels by 255"),
    ("uint8 range to binarize", lambda v: from_arrays(X * 255, binarize="static"), ValueError,
     "divide uint8 images by 255"),
    ("labels not matching images", lambda v: from_arrays(X, torch.zeros(4)), ValueError, "need 5 labels"),
    ("everything held out", lambda v: from_arrays(X, val_fraction=0.99), ValueError, "cannot hold out"),
    # training entry point
    ("fit on images of another size", lambda v: fit(v["plain"], from_arrays(torch.zeros(20, 5, 5)),
                                                    TrainConfig(epochs=1, device="cpu"), progress=False),
     ValueError, r"expects \(N, 16\)"),
    ("resume without a run directory", lambda v: fit(v["plain"], from_arrays(X), resume=True), ValueError,
     "needs the run_dir"),
    ("run directory with no checkpoint", lambda v: RunDir("/nonexistent").load_checkpoint(), CheckpointError,
     "does not exist"),
]


@pytest.mark.parametrize("what,call,error,message", PYTHON_CASES, ids=[case[0] for case in PYTHON_CASES])
def test_python_entry_points_refuse_bad_input(vaes, what, call, error, message):
    with pytest.raises(error, match=message):
        call(vaes)

