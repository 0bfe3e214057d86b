import gzip
import tempfile

import numpy as np
import pytest
import torch

from pyrovae.data import datasets as data_module
from pyrovae.data.datasets import (
    DataConfig,
    DataNotFoundError,
    as_floats,
    binarize_afresh,
    binarize_once,
    find_idx_files,
    from_arrays,
    load_dataset,
    read_idx,
)


def write_idx(path, array, compress=False):
    array = np.asarray(array)
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def write_fake_mnist(folder, n_train=60, n_test=20, compress=False):
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(folder / (name + suffix), array, compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_what_was_written(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    ints = np.array([1, -2, 70000], dtype=">i4")
    write_idx(tmp_path / "images", images, compress)
    write_idx(tmp_path / "ints", ints, compress)
    assert np.array_equal(read_idx(tmp_path / "images"), images)
    assert np.array_equal(read_idx(tmp_path / "ints"), ints)


@pytest.mark.parametrize("content,match", [
    (b"\x00\x00\x08\x01\x00\x00\x00\x05ab", "truncated"),  # 2 of 5 bytes
    (b"\x00\x00\x08\x01\x00\x00\x00\x01ab", "truncated"),  # a byte too many
    (b"", "truncated"),
    (b"PK\x03\x04 not idx", "not an IDX file.*magic"),
    (gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abcde")[:-10], "cannot read IDX file"),
])
def test_read_idx_rejects_corrupt_files_in_one_line(tmp_path, content, match):
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(ValueError, match=match) as error:
        read_idx(tmp_path / "bad")
    assert str(tmp_path / "bad") in str(error.value) and "download it again" in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_from_data_dir(tmp_path, compress):
    arrays = write_fake_mnist(tmp_path, compress=compress)
    data = load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path), binarize="none",
                                   val_fraction=0.25, download=False))
    assert data.image_shape == (1, 28, 28)
    assert (len(data.train), len(data.val), len(data.test)) == (45, 15, 20)
    expected_test = torch.tensor(arrays["t10k-images-idx3-ubyte"] / 255.0, dtype=torch.float32).reshape(20, 784)
    assert data.test.x.dtype == torch.uint8 and torch.allclose(as_floats(data.test.x), expected_test)
    assert torch.equal(data.test.y, torch.tensor(arrays["t10k-labels-idx1-ubyte"], dtype=torch.long))
    # Validation is held out of train: together they are the training file, no image twice.
    together = as_floats(torch.cat([data.train.x, data.val.x]))
    expected = torch.tensor(arrays["train-images-idx3-ubyte"] / 255.0, dtype=torch.float32).reshape(60, 784)
    assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, expected.tolist()))


def test_the_system_folder_of_gzipped_files_is_found_without_a_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(data_module, "SYSTEM_DIRS", {"fashion-mnist": tmp_path / "system"})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "system").mkdir()
    (tmp_path / "tmp").mkdir()
    arrays = write_fake_mnist(tmp_path / "system", compress=True)
    data = load_dataset(DataConfig(dataset="fashion-mnist", binarize="none", download=False))
    assert torch.equal(data.test.y, torch.tensor(arrays["t10k-labels-idx1-ubyte"], dtype=torch.long))
    assert list((tmp_path / "tmp").rglob("*-ubyte")) == []  # the decompressed copies are gone


def test_missing_files_offline_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(data_module, "SYSTEM_DIRS", {})

    def offline(dataset):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(data_module, "_download", offline)
    with pytest.raises(DataNotFoundError) as error:
        find_idx_files("fashion-mnist")
    message = str(error.value)
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "data_dir=DIR" in message and "download failed" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "\n" not in message


def test_incomplete_data_dir_is_reported(tmp_path):
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError, match=str(tmp_path)):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path)))


def test_digits_are_bundled_scaled_and_split():
    data = load_dataset(DataConfig(dataset="digits", binarize="none"))
    assert data.image_shape == (1, 8, 8)
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert data.num_classes == 10
    assert data.train.x.min() >= 0 and data.train.x.max() == 1
    assert len(torch.unique(data.train.x)) > 2


def test_binarization_modes():
    static_a = load_dataset(DataConfig(binarize="static"))
    static_b = load_dataset(DataConfig(binarize="static"))
    dynamic = load_dataset(DataConfig(binarize="dynamic"))
    gray = load_dataset(DataConfig(binarize="none"))
    # Static: one fixed draw; evaluation splits: the same draw for static and dynamic runs.
    assert torch.equal(static_a.train.x, static_b.train.x)
    assert set(torch.unique(static_a.train.x).tolist()) == {0.0, 1.0}
    assert torch.equal(static_a.test.x, dynamic.test.x) and torch.equal(static_a.val.x, dynamic.val.x)
    # Dynamic: grayscale kept, every batch a fresh draw from it.
    assert torch.equal(dynamic.train.x, gray.train.x)
    first = torch.cat([x for x, _ in dynamic.batches(4096, shuffle=False)])
    second = torch.cat([x for x, _ in dynamic.batches(4096, shuffle=False)])
    assert set(torch.unique(first).tolist()) == {0.0, 1.0} and not torch.equal(first, second)
    # Each pixel is 1 with probability equal to its gray value.
    assert torch.allclose((first + second).mean() / 2, gray.train.x.mean(), atol=0.01)


def test_batches_visit_every_example_once_in_a_shuffled_order():
    data = from_arrays(torch.rand(103, 4, 4), torch.arange(103))
    labels = torch.cat([y for _, y in data.batches(10)])
    assert len(labels) == len(data.train)
    assert sorted(labels.tolist()) == sorted(data.train.y.tolist())
    assert not torch.equal(labels, data.train.y)


def test_binarize_afresh_draws_each_pixel_with_its_own_probability():
    probabilities = torch.linspace(0, 1, 11, dtype=torch.float64)
    draws = binarize_afresh(probabilities.expand(20000, 11))
    assert draws.dtype == torch.float64 and set(torch.unique(draws).tolist()) <= {0.0, 1.0}
    assert (draws[:, 0] == 0).all() and (draws[:, -1] == 1).all()
    frequencies = draws.mean(0)
    stderr = (probabilities * (1 - probabilities) / 20000).sqrt()
    assert ((frequencies - probabilities).abs() <= 5 * stderr).all()


def test_binarize_once_is_fixed_by_its_seed():
    x = torch.rand(50, 10)
    assert torch.equal(binarize_once(x), binarize_once(x))
    assert not torch.equal(binarize_once(x, seed=1), binarize_once(x, seed=2))


@pytest.mark.parametrize("images,binarize,match", [
    (np.full((10, 4, 4), np.nan), "none", "NaN"),
    (np.full((10, 4, 4), 255.0), "static", r"\[0, 1\]"),
])
def test_from_arrays_rejects_bad_pixels(images, binarize, match):
    with pytest.raises(ValueError, match=match):
        from_arrays(images, binarize=binarize)


def test_uint8_training_pixels_stay_uint8_and_every_batch_is_scaled_to_the_unit_interval():
    pixels = np.arange(160, dtype=np.uint8).reshape(10, 4, 4)
    data = from_arrays(pixels, val_fraction=0.5)
    assert data.train.x.dtype == torch.uint8 and data.train.x.nbytes == 5 * 16  # a quarter of float32's bytes
    x, _ = next(data.batches(5, shuffle=False))
    assert torch.equal(x, data.train.x.float() / 255)
    assert data.val.x.dtype == torch.uint8  # scaled where they are scored
    assert sorted(torch.cat([data.train.x, data.val.x]).flatten().tolist()) == list(range(160))
    table = np.linspace(-50, 50, 40, dtype=np.float32).reshape(10, 4)
    assert from_arrays(table, val_fraction=0.5).train.x.abs().max() > 1  # a table of numbers: scored as they are


def test_from_arrays_rejects_labels_that_do_not_match():
    with pytest.raises(ValueError, match="10 images need 10 labels"):
        from_arrays(torch.rand(10, 4, 4), torch.arange(9))


def test_data_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        DataConfig(dataset="cifar")
    with pytest.raises(ValueError, match="unknown binarize 'sometimes'"):
        DataConfig(binarize="sometimes")
    with pytest.raises(ValueError, match="bundled"):
        DataConfig(dataset="digits", data_dir="/somewhere")
