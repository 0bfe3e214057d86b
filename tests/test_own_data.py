"""Users' own data through ``--dataset``: .npy/.npz arrays, folders of images, torchvision classes.

Every source is made here, small, and read by the real loading code; each trains an epoch,
evaluates and draws its pictures from the CLI.
"""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from pyrovae.cli import main
from pyrovae.data.datasets import DataConfig, from_arrays, load_dataset

QUICK = ["--epochs", "1", "--hidden", "16", "--z-dim", "2", "--batch-size", "16", "--threads", "1", "--no-progress",
         "--device", "cpu"]
RNG = np.random.default_rng(0)


def pixels(*shape):
    return (RNG.random(shape) * 255).astype(np.uint8)


def train_evaluate_plot(out, *flags):
    assert main(["train", *QUICK, "--out", str(out), *flags]) == 0
    assert main(["evaluate", str(out), "--num-samples", "5", "--no-progress"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert np.isfinite(report["nll"])
    return json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("array,flags,image_shape", [
    (pixels(60, 6, 5), [], [1, 6, 5]),
    (pixels(60, 3, 4, 4), ["--likelihood", "discretized-logistic"], [3, 4, 4]),
    (RNG.random((60, 2, 4, 4)).astype(np.float32), ["--likelihood", "continuous-bernoulli"], [2, 4, 4]),
    (RNG.normal(size=(60, 7)).astype(np.float64), ["--likelihood", "gaussian"], [1, 1, 7]),
], ids=["uint8-NHW", "uint8-NCHW", "float-NCHW", "float-table"])
def test_an_npy_array_of_each_shape_and_dtype_trains_evaluates_and_draws(tmp_path, array, flags, image_shape):
    np.save(tmp_path / "data.npy", array)
    config = train_evaluate_plot(tmp_path / "run", "--dataset", str(tmp_path / "data.npy"), *flags)
    assert config["model"]["image_shape"] == image_shape
    source = config["source"]
    assert source["shape"] == list(array.shape) and source["dtype"] == str(array.dtype) and len(source["sha256"]) == 64
    assert (tmp_path / "run" / "latent_scatter.png").is_file()
    assert (tmp_path / "run" / "samples.png").is_file() == (len(image_shape) == 3 and image_shape[:2] != [1, 1])


def test_a_table_skips_the_pictures_of_images_saying_so(tmp_path, capsys):
    np.save(tmp_path / "table.npy", RNG.normal(size=(60, 7)).astype(np.float32))
    assert main(["train", *QUICK, "--out", str(tmp_path / "run"), "--dataset", str(tmp_path / "table.npy"),
                 "--likelihood", "gaussian"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert notes == [f"pyrovae train: note: {name}.png skipped: the data are rows of a table, not images"
                     for name in ("samples", "reconstructions", "manifold", "interpolation")]
    assert {p.name for p in (tmp_path / "run").glob("*.png")} == {"training_curves.png", "latent_scatter.png",
                                                                  "kl_per_dim.png"}


def test_an_npz_with_its_own_splits_and_labels_trains_a_conditional_model(tmp_path):
    np.savez(tmp_path / "data.npz", x_train=pixels(60, 4, 4), y_train=RNG.integers(0, 3, 60),
             x_test=pixels(20, 4, 4), y_test=RNG.integers(0, 3, 20))
    train_evaluate_plot(tmp_path / "run", "--dataset", str(tmp_path / "data.npz"), "--conditional")
    data = load_dataset(DataConfig(dataset=str(tmp_path / "data.npz")))
    assert len(data.test) == 20 and len(data.train) + len(data.val) == 60 and data.num_classes == 3


def test_an_npz_of_x_and_y_holds_out_a_fixed_test_split(tmp_path):
    np.savez(tmp_path / "data.npz", x=pixels(100, 4, 4), y=np.arange(100) % 4)
    first, again = (load_dataset(DataConfig(dataset=str(tmp_path / "data.npz"))) for _ in range(2))
    assert len(first.test) == 10 and (first.test.x == again.test.x).all()
    assert first.provenance == again.provenance


def image_folder(root, sizes=((6, 5),), classes=("cat", "dog"), per_class=15, modes=("RGB",)):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            height, width = sizes[i % len(sizes)]
            Image.fromarray(pixels(height, width, 3)).convert(modes[i % len(modes)]).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("modes,channels", [(("L",), 1), (("L", "LA"), 1), (("L", "RGB"), 3)],
                         ids=["gray", "gray-and-gray-alpha", "gray-and-colour"])
def test_a_folder_of_grayscale_pngs_stays_one_channel_and_a_mixed_one_is_rgb(tmp_path, modes, channels):
    folder = image_folder(tmp_path / "images", modes=modes)
    data = load_dataset(DataConfig(dataset=str(folder), binarize="none", storage="memory"))
    assert data.image_shape == (channels, 6, 5) and data.provenance["shape"] == [30, channels, 6, 5]
    originals = {np.asarray(Image.open(file).convert("L" if channels == 1 else "RGB")).tobytes()
                 for file in folder.glob("*/*.png")}
    read = {np.moveaxis(x.reshape(channels, 6, 5).numpy(), 0, -1).squeeze(-1 if channels == 1 else ()).tobytes()
            for x in torch.cat([data.train.x, data.val.x, data.test.x])}
    assert read == originals  # the pixels as saved, not each channel binarized or coloured


def test_a_folder_of_pngs_in_class_subfolders_trains_with_its_classes(tmp_path):
    folder = image_folder(tmp_path / "images", sizes=((6, 5), (7, 5)))
    config = train_evaluate_plot(tmp_path / "run", "--dataset", str(folder), "--image-size", "4", "--conditional",
                                 "--net", "conv")
    assert config["model"]["image_shape"] == [3, 4, 4] and config["model"]["num_classes"] == 2
    assert config["source"]["classes"] == ["cat", "dog"]


@pytest.mark.slow  # FakeData draws 1000 images of 224 x 224 pixels: 10 s
def test_a_torchvision_class_by_name_trains(tmp_path):
    config = train_evaluate_plot(tmp_path / "run", "--dataset", "torchvision:FakeData", "--image-size", "8")
    assert config["model"]["image_shape"] == [3, 8, 8] and config["source"]["class"] == "FakeData"


@pytest.mark.parametrize("command", ["resume", "evaluate"])
def test_a_dataset_changed_after_training_is_refused_naming_what_changed(tmp_path, capsys, command):
    np.save(tmp_path / "data.npy", pixels(60, 4, 4))
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(out), "--dataset", str(tmp_path / "data.npy")]) == 0
    np.save(tmp_path / "data.npy", pixels(60, 4, 4))  # the same shape, other pixels
    capsys.readouterr()
    argv = (["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"] if command == "resume"
            else ["evaluate", str(out), "--num-samples", "5", "--no-progress"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pyrovae {'train' if command == 'resume' else 'evaluate'}: error: the data changed since "
                          f"this run was trained (sha256 was ") and "restore the data" in err and err.count("\n") == 1


def ragged(path):
    np.save(path, np.array([np.zeros(3), np.zeros(4)], dtype=object), allow_pickle=True)


def nan_pixels(path):
    x = RNG.random((20, 4, 4)).astype(np.float32)
    x[3, 1, 1] = np.nan
    np.save(path, x)


def one_class_no_images(path):
    (path / "cats").mkdir(parents=True)


def truncated_npz(path):
    np.savez(path, x=pixels(200, 8, 8))
    path.write_bytes(path.read_bytes()[:5000])


def negative_labels(path):
    np.savez(path, x=pixels(20, 4, 4), y=np.r_[-1, -3, -3, np.zeros(17, int)])


@pytest.mark.parametrize("make,dataset,flags,message", [
    (ragged, "bad.npy", [], r"cannot read .*bad.npy: .*A ragged array .* save one regular array of shape"),
    (nan_pixels, "bad.npy", [], r"bad.npy has NaN or infinite values in 1 of 20 examples; clean or drop them"),
    (lambda p: p.mkdir(), "empty", [], r"empty holds no images in class subfolders"),
    (one_class_no_images, "folder", [], r"folder holds no images in class subfolders"),
    (lambda p: image_folder(p, sizes=((6, 5), (5, 6))), "mixed", [],
     r"mixed has images of 2 sizes \(3x5x6, 3x6x5, as channels x height x width\); pass --image-size S"),
    (lambda p: None, "torchvision:CIFAR11", [], r"torchvision has no dataset class 'CIFAR11'; did you mean "
                                                r"torchvision:CIFAR10"),
    (lambda p: np.save(p, RNG.random((20, 4, 4)).astype(np.float32)), "grey.npy",
     ["--likelihood", "discretized-logistic"], r"training images are not 8-bit pixels"),
    (lambda p: None, "torchvision:CIFAR10", ["--no-download"],
     r"torchvision's CIFAR10 could not read its files from .*; it looks for .*cifar-10-batches-py/"),
    (lambda p: p.touch(), "empty.npy", [], r"error: \S*empty.npy is empty \(0 bytes\); write it again"),
    (lambda p: p.touch(), "empty.npz", [], r"error: \S*empty.npz is empty \(0 bytes\); write it again"),
    (truncated_npz, "cut.npz", [], r"error: \S*cut.npz is truncated or corrupt: numpy cannot read it; write it again"),
    (negative_labels, "neg.npz", [], r"3 of 20 are negative \(the smallest -3\); number the classes from 0"),
    (lambda p: np.save(p, pixels(20, 4, 4)), "plain.npy", ["--conditional"],
     r"plain.npy has no labels .*; train without --conditional, or give labels: an .npz with 'y'"),
], ids=["ragged", "nan", "empty-folder", "one-class-no-images", "mixed-sizes", "unknown-torchvision",
        "not-8-bit", "torchvision-offline", "empty-npy", "empty-npz", "truncated-npz", "negative-labels",
        "conditional-without-labels"])
def test_bad_data_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys, make, dataset, flags, message):
    source = tmp_path / dataset if not dataset.startswith("torchvision:") else None
    make(source)
    out = tmp_path / "run"
    argv = ["train", *QUICK, "--out", str(out), "--dataset", str(source or dataset), *flags]
    if dataset == "torchvision:CIFAR10":
        argv += ["--data-dir", str(tmp_path / "cifar")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not out.exists()
    assert "ragged" not in err or dataset == "bad.npy"


def test_labels_that_skip_classes_are_noted_once_at_the_start(tmp_path, capsys):
    np.savez(tmp_path / "gaps.npz", x=pixels(40, 4, 4), y=np.arange(40) % 2 * 12)
    assert main(["train", *QUICK, "--out", str(tmp_path / "run"), "--dataset", str(tmp_path / "gaps.npz"),
                 "--conditional"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("pyrovae train: note: the labels of ") and err.count("no example") == 1, err
    assert "use 2 of 13 classes (0..12): classes 1, 2, 3, 4, 5, 6, ... have no example" in err


def test_from_arrays_takes_torch_datasets_of_images_and_labels():
    from torchvision.datasets import FakeData

    train, test = FakeData(size=30, image_size=(3, 6, 6), num_classes=4), FakeData(size=10, image_size=(3, 6, 6))
    data = from_arrays(train, test_x=test)
    assert data.image_shape == (3, 6, 6) and len(data.train) + len(data.val) == 30 and len(data.test) == 10
    expected = [label for _, label in train]
    assert sorted(data.train.y.tolist() + data.val.y.tolist()) == sorted(expected)
    x, _ = next(data.batches(64))
    assert data.train.x.dtype == torch.uint8 and 0 <= x.min() and x.max() <= 1 and x.max() > 0.9


def test_fit_and_load_dataset_take_a_torch_dataset_directly():
    from torchvision.datasets import FakeData

    from pyrovae import ModelConfig, TrainConfig, build_vae, fit

    train, test = FakeData(size=40, image_size=(3, 4, 4), num_classes=2), FakeData(size=10, image_size=(3, 4, 4))
    data = load_dataset(train, test)
    assert data.image_shape == (3, 4, 4) and len(data.train) + len(data.val) == 40 and len(data.test) == 10
    vae = build_vae(ModelConfig(image_shape=(3, 4, 4), z_dim=2, hidden=(8,), likelihood="discretized-logistic"))
    rows = fit(vae, train, TrainConfig(epochs=2, batch_size=8, device="cpu"), progress=False, verbose=False)
    assert len(rows) == 2 and rows[-1]["train_loss"] < rows[0]["train_loss"]


@pytest.mark.slow  # 30 epochs through the CLI: about 20 s
def test_thirty_epochs_on_a_small_generated_image_folder_reach_a_finite_bits_per_dim_well_under_8(tmp_path):
    patterns = RNG.integers(0, 256, size=(3, 8, 8, 3))  # three classes: a colour pattern each, plus noise
    for label, pattern in enumerate(patterns):
        (tmp_path / "images" / str(label)).mkdir(parents=True)
        for i in range(100):
            image = np.clip(pattern + RNG.integers(-8, 9, size=pattern.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(tmp_path / "images" / str(label) / f"{i}.png")
    assert main(["train", "--dataset", str(tmp_path / "images"), "--likelihood", "discretized-logistic",
                 "--epochs", "30", "--hidden", "64", "--z-dim", "4", "--batch-size", "32", "--lr", "0.01",
                 "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert main(["evaluate", str(tmp_path / "run"), "--num-samples", "50", "--no-progress"]) == 0
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    # 17 noise levels per pixel: at best log2(17) = 4.1 bits/dim; uniform pixels: 8
    assert np.isfinite(report["bits_per_dim"]) and report["bits_per_dim"] < 6, report
