"""Input files that must neither hang, crash nor mislead (issue 33, items 3, 7, 12, 13 and 15): each is refused in
one line that names the file or the argument and the fix, before a run directory is made."""

import os
import pickle
import re
import threading
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from pyrovae import ModelConfig, build_vae, fit
from pyrovae.cli import main
from pyrovae.data.datasets import from_arrays
from pyrovae.data.sources import read_source

QUICK = ["--epochs", "1", "--hidden", "16", "--z-dim", "2", "--no-progress", "--device", "cpu", "--threads", "1"]
PIXELS = np.random.default_rng(0).integers(0, 256, (40, 4, 4), dtype=np.uint8)
WAIT_S = 20
"""How long a refusal may take before the test calls it a hang."""


def image_folder(root, bad_name="zz.png"):
    """Two classes of small PNGs; returns the path of a further file in the second class, for the test to make."""
    for label in "ab":
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(PIXELS[i]).save(root / label / f"{i}.png")
    return root / "b" / bad_name


def truncated_png(path):
    Image.fromarray(PIXELS[0]).save(path)
    path.write_bytes(path.read_bytes()[:60])


def garbled_npz_member(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"not an array")


FOLDER_CASES = {
    "fifo": (os.mkfifo, r"is not a regular file .* move it out of"),
    "device-link": (lambda p: p.symlink_to(os.devnull), r"is not a regular file .* move it out of"),
    "empty-png": (lambda p: p.touch(), r"is not an image file PIL can read .*replace it"),
    "text-png": (lambda p: p.write_text("<html>a login page</html>"), r"is not an image file PIL can read"),
    "truncated-png": (truncated_png, r"cannot read the image .*replace it"),
}

ARRAY_CASES = {
    "text-npz": ("bad.npz", lambda p: p.write_text("a text file"), r"is not a numpy file; write it again"),
    "text-npy": ("bad.npy", lambda p: p.write_text("x,y\n1,2\n"), r"is not a numpy file; write it again"),
    "pickle-npy": ("bad.npy", lambda p: p.write_bytes(pickle.dumps([1, 2])), r"is not a numpy file"),
    "garbled-npz-member": ("bad.npz", garbled_npz_member, r"is truncated or corrupt.*write it again"),
    "ragged-npz": ("bad.npz", lambda p: np.savez(p, x=np.array([np.zeros(3), np.zeros(4)], dtype=object)),
                   r"holds Python objects.*save one regular array"),
    "empty-x_test": ("bad.npz", lambda p: np.savez(p, x_train=PIXELS, x_test=PIXELS[:0]),
                     r"\['x_test'\] has shape \(0, 4, 4\).*non-empty"),
    "no-values": ("bad.npy", lambda p: np.save(p, np.zeros((10, 0), np.float32)), r"has shape \(10, 0\).*non-empty"),
    "label-1e9": ("bad.npz", lambda p: np.savez(p, x=PIXELS, y=np.r_[10**9, np.zeros(39, int)]),
                  r"\['y'\] holds the label 1000000000, more classes than the 40 examples"),
    "uint64-label": ("bad.npz", lambda p: np.savez(p, x=PIXELS, y=np.array([2**64 - 6] + [0] * 39, np.uint64)),
                     r"holds the label 18446744073709551610, more classes"),
    "float-labels": ("bad.npz", lambda p: np.savez(p, x=PIXELS, y=np.full(40, 0.999)),
                     r"\['y'\]: 40 images need 40 labels, integers"),
}


def refused(argv, capsys, out):
    """Run the CLI in a thread, so that a hang fails the test; return its one-line error."""
    result = []
    thread = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    thread.start()
    thread.join(WAIT_S)
    assert not thread.is_alive(), f"{argv} still runs after {WAIT_S} s"
    assert result == [2]
    err = capsys.readouterr().err
    assert err.startswith("pyrovae train: error: ") and err.count("\n") == 1, err
    assert "allow_pickle" not in err
    assert not out.exists()
    return err


@pytest.mark.parametrize("case", FOLDER_CASES)
def test_a_bad_file_in_an_image_folder_is_refused_in_one_line_naming_it(tmp_path, capsys, case):
    make, message = FOLDER_CASES[case]
    bad = image_folder(tmp_path / "images")
    make(bad)
    try:
        err = refused(["train", *QUICK, "--dataset", str(tmp_path / "images"), "--out", str(tmp_path / "run")],
                      capsys, tmp_path / "run")
    finally:
        if case == "fifo":  # a writer's end lets a blocked reader of a regression go
            os.close(os.open(bad, os.O_RDWR | os.O_NONBLOCK))
    assert str(bad) in err and re.search(message, err), err


@pytest.mark.parametrize("flags", [[], ["--image-size", "8"]], ids=["as-it-is", "resized"])
@pytest.mark.parametrize("side", [40, 80], ids=["above-the-limit", "above-twice-the-limit"])
def test_an_image_over_pils_decompression_bomb_limit_is_refused_before_decoding(tmp_path, capsys, monkeypatch,
                                                                                 side, flags):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 x 40: a warning from PIL, 80 x 80: an error
    bad = image_folder(tmp_path / "images", "huge.png")
    Image.new("L", (side, side), 7).save(bad)
    err = refused(["train", *QUICK, "--dataset", str(tmp_path / "images"), "--out", str(tmp_path / "run"), *flags],
                  capsys, tmp_path / "run")
    assert str(bad) in err and "more pixels than PIL's limit of 1000" in err and "shrink it" in err


def test_a_link_to_an_image_in_a_folder_is_read_like_the_image(tmp_path):
    image_folder(tmp_path / "images", "link.png").symlink_to(tmp_path / "images" / "a" / "0.png")
    assert read_source(str(tmp_path / "images")).provenance["shape"] == [9, 1, 4, 4]


@pytest.mark.parametrize("case", ARRAY_CASES)
def test_a_bad_array_file_is_refused_in_one_line_naming_it(tmp_path, capsys, case):
    name, make, message = ARRAY_CASES[case]
    make(tmp_path / name)
    flags = ["--conditional"] if "label" in case else []
    err = refused(["train", *QUICK, "--dataset", str(tmp_path / name), "--out", str(tmp_path / "run"), *flags],
                  capsys, tmp_path / "run")
    assert str(tmp_path / name) in err and re.search(message, err), err


def test_an_image_size_whose_images_cannot_fit_in_memory_is_refused_before_resizing_any(tmp_path, capsys):
    np.save(tmp_path / "good.npy", PIXELS)
    err = refused(["train", *QUICK, "--dataset", str(tmp_path / "good.npy"), "--image-size", "100000", "--out",
                   str(tmp_path / "run")], capsys, tmp_path / "run")
    assert re.search(r"--image-size 100000 makes \d+ images of .* free; lower --image-size", err), err


VAE = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,)))
X = torch.rand(20, 4, 4)
PYTHON_CASES = {
    "a dataset's name": (lambda: fit(VAE, "digits"), r"got str; .*load_dataset\(DataConfig\(dataset='digits'\)\)"),
    "None": (lambda: fit(VAE, None), r"the training data must be a Dataset, a tensor .*got NoneType$"),
    "no images": (lambda: fit(VAE, np.zeros((0, 16))), r"has shape \(0, 16\) .*non-empty"),
    "no values per image": (lambda: from_arrays(np.zeros((10, 0))), r"has shape \(10, 0\) .*non-empty"),
    "an empty test split": (lambda: from_arrays(X, test_x=torch.zeros(0, 4, 4)), r"the test data has shape \(0,"),
    "complex images": (lambda: from_arrays(X.to(torch.complex64)), r"\(torch.complex64\); .*of real numbers"),
    "an object array": (lambda: from_arrays(np.array([[1, "a"]], dtype=object)), r"got ndarray of object$"),
    "labels 0.999": (lambda: from_arrays(X, torch.full((20,), 0.999)), r"train_y: .*integers >= 0.*got float32"),
    "whole float labels, as the CLI": (lambda: from_arrays(X, torch.zeros(20)), r"train_y: .*got float32"),
    "complex labels": (lambda: from_arrays(X, torch.zeros(20, dtype=torch.complex64)), r"got complex64"),
    "float test labels": (lambda: from_arrays(X, test_x=X, test_y=np.full(20, 1.5)), r"test_y: .*got float64"),
    "a label of 10^6": (lambda: from_arrays(X, np.r_[10**6, np.zeros(19, int)]),
                        r"train_y holds the label 1000000, more classes than the 20 examples"),
    "a uint64 label above 2^63": (lambda: from_arrays(X, np.array([2**64 - 6] + [0] * 19, np.uint64)),
                                  r"holds the label 18446744073709551610"),
}


@pytest.mark.parametrize("case", PYTHON_CASES)
def test_python_data_that_pyrovae_cannot_read_is_a_one_line_value_error(case):
    call, message = PYTHON_CASES[case]
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)
