"""TensorBoard events: written while training and by `plot --tensorboard`, read back by TensorBoard itself."""

import contextlib
import io
import json
import math
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyro
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pyrovae import DataConfig, ModelConfig, TrainConfig, build_vae, fit, load_dataset
from pyrovae.cli import commands, main
from pyrovae.report.latents import encoder_means
from pyrovae.report.tensorboard import EMBEDDING_TAG, INSTALL, picture_epoch
from pyrovae.runs.load import load_run
from pyrovae.runs.rundir import RunDir

EPOCHS, EVERY, Z_DIM = 5, 2, 3
PICTURE_EPOCHS = [1, 2, 4, 5]  # the first, every second, the last


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(dataset="digits", binarize="dynamic"))


def train(digits, run_dir, **settings):
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(image_shape=digits.image_shape, z_dim=Z_DIM, hidden=(32,)))
    config = TrainConfig(epochs=EPOCHS, device="cpu", tensorboard_every=EVERY, **settings)
    fit(vae, digits, config, run_dir=run_dir, progress=False)
    return vae


@pytest.fixture(scope="module")
def runs(digits, tmp_path_factory):
    """The same training with TensorBoard events and without."""
    root = tmp_path_factory.mktemp("tensorboard")
    train(digits, root / "with", tensorboard=True)
    train(digits, root / "without")
    return root


def events(folder):
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def metric_tags(run_dir):
    return {f"metrics/{name}" for name in RunDir(run_dir).read_metrics()[0] if name != "epoch"}


def test_picture_epochs_are_the_first_the_last_and_every_nth():
    assert [epoch for epoch in range(1, 26) if picture_epoch(epoch, 25, 10)] == [1, 10, 20, 25]
    assert [epoch for epoch in range(1, 4) if picture_epoch(epoch, 3, 10)] == [1, 3]


def test_every_epoch_metric_is_a_scalar_with_the_value_in_metrics_jsonl(runs):
    board = events(runs / "with" / "tensorboard")
    rows = RunDir(runs / "with").read_metrics()
    assert set(board.Tags()["scalars"]) == metric_tags(runs / "with")
    for tag in board.Tags()["scalars"]:
        logged = board.Scalars(tag)
        assert [event.step for event in logged] == list(range(1, EPOCHS + 1)), tag
        expected = [row[tag.removeprefix("metrics/")] for row in rows]
        assert [event.value for event in logged] == pytest.approx(expected, rel=1e-6), tag


def test_pictures_and_histograms_at_the_first_the_last_and_every_nth_epoch(runs, digits):
    board = events(runs / "with" / "tensorboard")
    assert set(board.Tags()["images"]) == {"pictures/samples", "pictures/reconstructions"}
    assert set(board.Tags()["histograms"]) == {f"posterior_mean/z{i}" for i in range(Z_DIM)}
    for tag in board.Tags()["images"]:
        assert [event.step for event in board.Images(tag)] == PICTURE_EPOCHS, tag
    # 64 samples, 8 to a row, and 8 validation images over their reconstructions; 8x8 tiles, 1 pixel apart.
    (width, height), = {(event.width, event.height) for event in board.Images("pictures/samples")}
    assert (width, height) == (8 * 9 + 1, 8 * 9 + 1)
    last = board.Images("pictures/reconstructions")[-1]
    with Image.open(io.BytesIO(last.encoded_image_string)) as picture:
        assert picture.size == (8 * 9 + 1, 2 * 9 + 1)
        pixels = torch.from_numpy(np.asarray(picture.convert("L"), dtype=np.float32)) / 255
    assert pixels.std() > 0.1  # not blank
    first_original = digits.val.x[0].reshape(8, 8)
    assert torch.allclose(pixels[1:9, 1:9], first_original, atol=1 / 255)  # the top row holds the originals
    for i in range(Z_DIM):
        logged = board.Histograms(f"posterior_mean/z{i}")
        assert [event.step for event in logged] == PICTURE_EPOCHS
        assert all(event.histogram_value.num == len(digits.val) for event in logged)


def test_the_projector_holds_the_final_posterior_means_with_labels_and_a_sprite(runs, digits):
    folder = runs / "with" / "tensorboard"
    config = (folder / "projector_config.pbtxt").read_text()
    embedding = folder / f"{EPOCHS:05d}" / EMBEDDING_TAG
    for name in ("tensors.tsv", "metadata.tsv", "sprite.png"):
        assert f'"{embedding.relative_to(folder) / name}"' in config, name
    means = torch.tensor([[float(v) for v in line.split("\t")]
                          for line in (embedding / "tensors.tsv").read_text().splitlines()])
    vae = load_run(runs / "with", data=False).vae
    assert torch.allclose(means, encoder_means(vae, digits.val.x), atol=1e-5)
    labels = (embedding / "metadata.tsv").read_text().split()
    assert labels == [str(label) for label in digits.val.y.tolist()]
    side = math.ceil(math.sqrt(len(digits.val))) * 8  # a square of 8x8 tiles
    with Image.open(embedding / "sprite.png") as sprite:
        assert sprite.size == (side, side)
        assert "single_image_dim: 8" in config


def test_writing_events_changes_nothing_in_training(runs):
    with_events, without = load_run(runs / "with", data=False), load_run(runs / "without", data=False)
    for (name, a), b in zip(with_events.vae.state_dict().items(), without.vae.state_dict().values()):
        assert torch.equal(a, b), name
    assert not (runs / "without" / "tensorboard").exists()
    assert with_events.config["train"]["tensorboard"] and not without.config["train"]["tensorboard"]


def test_plot_writes_the_same_events_for_a_run_trained_without_them(runs, capsys):
    run = runs / "without"
    for _ in range(2):  # a second time replaces the events rather than adding to them
        assert main(["plot", str(run), "--tensorboard", "--only", "samples", "--device", "cpu"]) == 0
    assert "tensorboard --logdir" in capsys.readouterr().out
    board, trained = events(run / "tensorboard"), events(runs / "with" / "tensorboard")
    assert board.Tags()["images"] == trained.Tags()["images"]
    assert board.Tags()["histograms"] == trained.Tags()["histograms"]
    assert set(board.Tags()["scalars"]) == metric_tags(run)
    assert [event.step for event in board.Scalars("metrics/val_neg_elbo")] == list(range(1, EPOCHS + 1))
    assert [event.step for event in board.Images("pictures/samples")] == [EPOCHS]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert (run / "tensorboard" / f"{EPOCHS:05d}" / EMBEDDING_TAG / "sprite.png").is_file()


def test_resume_appends_events_and_overwrite_removes_them(digits, tmp_path):
    run = tmp_path / "run"
    for epochs, resume in ((2, False), (3, True)):
        pyro.set_rng_seed(0)
        vae = build_vae(ModelConfig(image_shape=digits.image_shape, z_dim=2, hidden=(16,)))
        fit(vae, digits, TrainConfig(epochs=epochs, device="cpu", tensorboard=True), run_dir=run, resume=resume,
            progress=False, verbose=False)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert [event.step for event in events(run / "tensorboard").Scalars("metrics/kl")] == [1, 2, 3]
    assert main(["train", "--epochs", "1", "--hidden", "16", "--z-dim", "2", "--no-progress", "--device", "cpu",
                 "--overwrite", "--out", str(run)]) == 0
    assert not (run / "tensorboard").exists()


def test_a_run_saved_before_tensorboard_existed_loads_and_resumes(digits, tmp_path):
    run = tmp_path / "run"
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(image_shape=digits.image_shape, z_dim=2, hidden=(16,)))
    fit(vae, digits, TrainConfig(epochs=1, device="cpu"), run_dir=run, progress=False, verbose=False)
    config = json.loads((run / "config.json").read_text())
    del config["train"]["tensorboard"], config["train"]["tensorboard_every"]
    (run / "config.json").write_text(json.dumps(config))
    assert load_run(run).config["train"] == config["train"]
    assert main(["train", "--epochs", "2", "--resume", "--tensorboard", "--no-progress", "--out", str(run)]) == 0
    assert [event.step for event in events(run / "tensorboard").Scalars("metrics/kl")] == [2]


def test_without_the_package_training_stops_before_any_work_naming_the_pip_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    monkeypatch.setattr(commands, "load_dataset", lambda *args: pytest.fail("the data were loaded"))
    with pytest.raises(ValueError, match=r"tensorboard=True needs the tensorboard package.*pip install"):
        TrainConfig(tensorboard=True)
    for argv in (["train", "--tensorboard", "--out", str(tmp_path / "run")], ["plot", str(tmp_path), "--tensorboard"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"pyrovae {argv[0]}: error: --tensorboard needs the tensorboard package, which is not " \
                      f"installed; add it with `{INSTALL}`\n"
    assert INSTALL == "pip install pyrovae[tensorboard]"
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_needs_a_run_directory(digits):
    with pytest.raises(ValueError, match="tensorboard=True writes its events into the run directory; pass run_dir"):
        train(digits, None, tensorboard=True)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_tensorboard_serves_the_run_over_http(runs):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(runs / "with"),
                               "--port", str(port), "--host", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    try:
        deadline, tags = time.monotonic() + 60, {}
        while "tensorboard" not in tags and time.monotonic() < deadline:  # until it listens and has read the run
            assert server.poll() is None, "tensorboard exited"
            time.sleep(0.2)
            with contextlib.suppress(OSError):
                tags = fetch_json(f"{base}/tags")
        assert "metrics/val_neg_elbo" in tags["tensorboard"]
        served = fetch_json(f"{base}/scalars?run=tensorboard&tag=metrics/val_neg_elbo")
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows = RunDir(runs / "with").read_metrics()
    assert [step for _, step, _ in served] == [row["epoch"] for row in rows]
    assert [value for _, _, value in served] == pytest.approx([row["val_neg_elbo"] for row in rows], rel=1e-6)
