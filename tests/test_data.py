import gzip
import sys

import numpy as np
import pytest
import torch

from pyrovae.data import idx
from pyrovae.data.datasets import (
    DataConfig,
    DataNotFoundError,
    as_floats,
    binarize_afresh,
    binarize_once,
    from_arrays,
    load_dataset,
)
from pyrovae.data.idx import data_root, find_idx_files, read_idx


def write_idx(path, array, compress=False):
    array = np.asarray(array)
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
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


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzipped"])
@pytest.mark.parametrize("dtype", ["i1", ">i2", ">f4", ">f8"])
def test_read_idx_reads_every_type_into_a_writable_native_array(tmp_path, compress, dtype):
    array = (np.arange(24).reshape(2, 3, 4) * 3 - 36).astype(dtype)
    write_idx(tmp_path / "named-as-plain-whether-gzipped-or-not", array, compress)
    read = read_idx(tmp_path / "named-as-plain-whether-gzipped-or-not")
    assert read.shape == (2, 3, 4) and np.array_equal(read, array)
    assert read.dtype.isnative and read.flags.writeable


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
    monkeypatch.setattr(idx, "SYSTEM_DIRS", {"fashion-mnist": tmp_path / "system"})
    (tmp_path / "system").mkdir()
    arrays = write_fake_mnist(tmp_path / "system", compress=True)
    data = load_dataset(DataConfig(dataset="fashion-mnist", binarize="none", download=False))
    assert torch.equal(data.test.y, torch.tensor(arrays["t10k-labels-idx1-ubyte"], dtype=torch.long))


def test_missing_files_offline_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(idx, "SYSTEM_DIRS", {})

    def offline(dataset):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(idx, "_download", offline)
    with pytest.raises(DataNotFoundError) as error:
        find_idx_files("fashion-mnist")
    message = str(error.value)
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "data_dir=DIR" in message and "download failed" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "\n" not in message


def test_a_failed_mnist_download_is_one_line_naming_the_files_and_leaves_no_empty_folder(tmp_path, monkeypatch,
                                                                                          capsys):
    from urllib.error import URLError

    import torchvision.datasets.mnist

    from pyrovae.cli import main

    def offline(url, **kwargs):  # torchvision's MNIST tries each mirror, then raises one error of many lines
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    assert main(["train", "--dataset", "mnist", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Tried" not in err and "Temporary failure in name resolution" in err, err
    assert all(name in err for name in idx.IDX_FILES.values()) and err.rstrip().endswith("pass it as --data-dir DIR.")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_the_data_folder_is_pyrovae_data_else_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "data"))
    assert data_root() == tmp_path / "data"
    monkeypatch.delenv("PYROVAE_DATA")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if sys.platform.startswith("linux"):
        assert data_root() == tmp_path / "home" / ".cache" / "pyrovae"
    else:
        assert data_root().name in ("pyrovae", "Cache") and str(tmp_path / "home") in str(data_root())


def test_a_torchvision_dataset_is_looked_for_in_pyrovae_data(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError) as error:
        load_dataset(DataConfig(dataset="torchvision:MNIST", download=False))
    message = str(error.value)
    assert f"from {tmp_path / 'data' / 'torchvision'} " in message and "data_dir=DIR" in message
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


def fingerprint(indices):
    """The first ten indices, their sum, and a sum weighted by position (which pins their order)."""
    indices = np.asarray(indices, dtype=np.int64)
    return indices[:10].tolist(), int(indices.sum()), int((np.arange(len(indices)) * indices).sum())


# Measured on pyrovae 0.3.0: a split that moves changes every result trained on it.
VALIDATION_SPLITS = [
    (10, 0.1, ([4], 4, 0), ([1, 7, 5, 3, 9, 0, 8, 6, 2], 41, 168)),
    (7, 0.4, ([4, 0, 5], 9, 10), ([3, 2, 6, 1], 12, 17)),
    (1497, 0.1, ([263, 888, 1225, 387, 404, 780, 1216, 280, 192, 1452], 110082, 8057874),
     ([1425, 953, 159, 580, 669, 486, 947, 1108, 438, 1322], 1009674, 669112932)),
    (60000, 0.1, ([36044, 10678, 57327, 55074, 21567, 15479, 9481, 43095, 26145, 7479], 179547942, 539394289227),
     ([11361, 45009, 30176, 22709, 27663, 2435, 27294, 13199, 15478, 52403], 1620422058, 43707831868726)),
]
TEST_HOLD_OUTS = [
    (3, ([2], 2, 0), ([0, 1], 1, 1)),
    (10, ([4], 4, 0), ([6, 2, 7, 3, 5, 9, 0, 8, 1], 41, 154)),
    (1000, ([459, 206, 222, 162, 711, 814, 350, 890, 518, 264], 46731, 2268030),
     ([679, 292, 357, 374, 416, 865, 337, 870, 876, 821], 452769, 202886237)),
    (50000, ([25461, 5892, 10377, 28814, 9578, 43565, 28804, 22391, 4214, 49155], 124756520, 310240726132),
     ([24240, 42255, 16704, 18579, 42521, 46870, 10844, 39667, 4728, 33601], 1125218480, 25340798191576)),
]


@pytest.mark.parametrize("count,fraction,held,kept", VALIDATION_SPLITS)
def test_the_validation_split_holds_out_the_same_images_in_the_same_order(count, fraction, held, kept):
    data = from_arrays(np.zeros((count, 1), np.float32), np.arange(count), val_fraction=fraction)
    assert fingerprint(data.val.y) == held and fingerprint(data.train.y) == kept


@pytest.mark.parametrize("count,held,kept", TEST_HOLD_OUTS)
def test_a_source_without_a_test_split_holds_out_the_same_images_in_the_same_order(tmp_path, count, held, kept):
    from pyrovae.data.sources import labels_of, read_source

    np.savez(tmp_path / "rows.npz", x=np.zeros((count, 1), np.float32), y=np.arange(count))
    source = read_source(str(tmp_path / "rows.npz"))
    assert fingerprint(labels_of(source.test)) == held and fingerprint(labels_of(source.train)) == kept


def test_the_digits_splits_are_the_same_images_in_the_same_order():
    data = load_dataset(DataConfig(dataset="digits", binarize="none"))
    assert fingerprint(data.test.y) == ([6, 5, 5, 0, 4, 4, 8, 4, 9, 2], 1263, 188509)
    assert fingerprint(data.val.y) == ([9, 6, 6, 4, 8, 7, 8, 7, 9, 7], 761, 54900)
    assert fingerprint(data.train.y) == ([4, 4, 9, 1, 2, 6, 5, 7, 9, 1], 6046, 4063406)
    assert round(data.test.x.sum().item() * 16) == 93087  # pixels were 0..16
