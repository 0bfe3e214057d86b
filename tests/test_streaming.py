"""Training images streamed from their files: chosen when they exceed the in-memory limit, and training alike.

Every source is made here, small: a folder of PNGs and a uint8 .npy file, read by the real
loading code and by DataLoader worker processes.
"""

import logging

import numpy as np
import pyro
import pytest
import torch
from PIL import Image

from pyrovae import ModelConfig, TrainConfig, build_vae, fit
from pyrovae.cli import main
from pyrovae.data.datasets import DataConfig, load_dataset
from pyrovae.data.streaming import StreamedSplit
from pyrovae.settings import SettingError

RNG = np.random.default_rng(0)


def image_folder(root, classes=("cat", "dog", "owl"), per_class=16, size=(6, 5)):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((RNG.random((*size, 3)) * 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def trained(data, epochs=2):
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(image_shape=data.image_shape, z_dim=2, hidden=(8,), likelihood="discretized-logistic"))
    metrics = fit(vae, data, TrainConfig(epochs=epochs, batch_size=8, device="cpu"), progress=False, verbose=False)
    return metrics, vae.state_dict()


@pytest.mark.parametrize("source", ["folder", "npy"])
def test_streamed_training_follows_the_in_memory_trajectory_for_the_same_seed(tmp_path, source):
    if source == "folder":
        dataset = str(image_folder(tmp_path / "images"))
    else:
        np.save(tmp_path / "x.npy", (RNG.random((48, 3, 4, 4)) * 255).astype(np.uint8))
        dataset = str(tmp_path / "x.npy")
    in_memory = load_dataset(DataConfig(dataset=dataset, storage="memory", binarize="none"))
    streamed = load_dataset(DataConfig(dataset=dataset, storage="stream", binarize="none", workers=1))
    assert isinstance(streamed.train, StreamedSplit) and not isinstance(in_memory.train, StreamedSplit)
    assert torch.equal(streamed.test.x, in_memory.test.x) and torch.equal(streamed.train.y, in_memory.train.y)
    (metrics, weights), (metrics_streamed, weights_streamed) = trained(in_memory), trained(streamed)
    assert [row["train_loss"] for row in metrics] == [row["train_loss"] for row in metrics_streamed]
    assert all(torch.equal(weights[name], weights_streamed[name]) for name in weights)


def test_a_streamed_epoch_resumes_at_the_batch_it_stopped_at(tmp_path):
    dataset = str(image_folder(tmp_path / "images"))
    in_memory = load_dataset(DataConfig(dataset=dataset, storage="memory", binarize="none"))
    streamed = load_dataset(DataConfig(dataset=dataset, storage="stream", binarize="none", workers=0))
    order = in_memory.shuffled_order(torch.Generator().manual_seed(3))
    for (x, y), (x_s, y_s) in zip(in_memory.batches(5, order=order, first=2), streamed.batches(5, order=order, first=2),
                                  strict=True):
        assert torch.equal(x, x_s) and torch.equal(y, y_s) and x.dtype == torch.float32 and x.max() <= 1


def test_auto_streams_what_exceeds_the_memory_limit_and_says_so(tmp_path, caplog):
    dataset = str(image_folder(tmp_path / "images"))
    assert not isinstance(load_dataset(DataConfig(dataset=dataset)).train, StreamedSplit)  # 3 kB fit anywhere
    with caplog.at_level(logging.WARNING, logger="pyrovae"):
        data = load_dataset(DataConfig(dataset=dataset, memory_limit=1e-6))  # about 1 kB
    assert isinstance(data.train, StreamedSplit)
    assert "more than the in-memory limit of 1.07kB (memory_limit): streaming them" in caplog.text


def test_the_cli_reports_where_the_training_images_are(tmp_path, capsys):
    dataset = str(image_folder(tmp_path / "images"))
    assert main(["train", "--dataset", dataset, "--storage", "stream", "--workers", "1", "--epochs", "1",
                 "--hidden", "8", "--z-dim", "2", "--batch-size", "8", "--likelihood", "discretized-logistic",
                 "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert "training images streamed from" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "run"), "--num-samples", "3", "--no-progress"]) == 0


@pytest.mark.parametrize("make,config,match", [
    (None, dict(dataset="digits", storage="stream"), "bundled digits is held in memory"),
    ("float", dict(storage="stream"), "storage='stream' reads uint8 images"),
    ("folder", dict(storage="stream", binarize="static"), "binarize='static' draws every training image once"),
    ("folder", dict(memory_limit=0), "memory_limit is a size in GiB"),
], ids=["bundled", "float-array", "static-binarization", "zero-limit"])
def test_what_cannot_be_streamed_is_refused_in_one_line(tmp_path, make, config, match):
    if make == "float":
        np.save(tmp_path / "x.npy", RNG.random((30, 4, 4)).astype(np.float32))
        config["dataset"] = str(tmp_path / "x.npy")
    elif make == "folder":
        config["dataset"] = str(image_folder(tmp_path / "images"))
    with pytest.raises(SettingError, match=match):
        load_dataset(DataConfig(**config))


def test_few_labels_are_not_streamed(tmp_path):
    data = load_dataset(DataConfig(dataset=str(image_folder(tmp_path / "images")), storage="stream", labeled=3))
    vae = build_vae(ModelConfig(image_shape=data.image_shape, z_dim=2, hidden=(8,), prior="class-means", num_classes=3))
    with pytest.raises(SettingError, match="hidden labels mixes labelled images into every batch from memory"):
        fit(vae, data, TrainConfig(epochs=1, batch_size=8, device="cpu"), progress=False, verbose=False)
