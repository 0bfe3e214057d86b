"""`pyrovae encode` (the posterior of every example) and `pyrovae reconstruct` (E[x | z = its mean])."""

import numpy as np
import pytest
import torch
from cli_helpers import TINY

from pyrovae import load_run
from pyrovae.cli import main
from pyrovae.data.datasets import as_floats


@pytest.fixture(scope="module")
def loaded(run):
    return load_run(run)


def test_encode_writes_the_posterior_and_label_of_every_test_example(run, loaded, tmp_path):
    assert main(["encode", str(run), "--out", str(tmp_path / "latents.npy")]) == 0
    records = np.load(tmp_path / "latents.npy")
    test = loaded.data.test
    loc, scale = loaded.vae.encode(as_floats(test.x))
    assert records.shape == (len(test),)
    np.testing.assert_allclose(records["loc"], loc.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(records["scale"], scale.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(records["y"], test.y.numpy())


def test_encode_to_npz_names_the_arrays_and_takes_a_split_and_a_limit(run, loaded, tmp_path):
    assert main(["encode", str(run), "--split", "train", "--limit", "7", "--out", str(tmp_path / "z.npz")]) == 0
    with np.load(tmp_path / "z.npz") as arrays:
        assert set(arrays) == {"loc", "scale", "y"}
        assert arrays["loc"].shape == arrays["scale"].shape == (7, 2)
        np.testing.assert_array_equal(arrays["y"], loaded.data.train.y[:7].numpy())


def test_encode_writes_no_labels_for_data_without_them(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((60, 16), dtype=np.float32))
    assert main(["train", *TINY, "--dataset", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run")]) == 0
    assert main(["encode", str(tmp_path / "run"), "--out", str(tmp_path / "z.npy")]) == 0
    assert np.load(tmp_path / "z.npy").dtype.names == ("loc", "scale")


def test_reconstruct_writes_the_decoded_posterior_means_as_npy_csv_and_png(run, loaded, tmp_path):
    x = as_floats(loaded.data.test.x[:5])
    expected = loaded.vae.reconstruct(x).numpy()
    for name in ("r.npy", "r.csv"):
        assert main(["reconstruct", str(run), "--n", "5", "--out", str(tmp_path / name)]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.loadtxt(tmp_path / "r.csv", delimiter=","), expected, rtol=1e-5, atol=1e-6)
    assert main(["reconstruct", str(run), "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")


def test_reconstruct_writes_every_example_of_the_split_by_default(run, loaded, tmp_path):
    assert main(["reconstruct", str(run), "--split", "val", "--out", str(tmp_path / "r.npy")]) == 0
    assert np.load(tmp_path / "r.npy").shape == (len(loaded.data.val), loaded.vae.x_dim)


@pytest.mark.parametrize("command, out, flags, named", [
    ("encode", "z.png", [], "--out"),
    ("reconstruct", "r.txt", [], "--out"),
    ("reconstruct", "r.png", ["--n", "600"], "--n 600"),
    ("encode", "z.npy", ["--limit", "0"], "--limit"),
])
def test_bad_outputs_are_refused_in_one_line_before_anything_is_written(run, tmp_path, capsys, command, out, flags,
                                                                        named):
    assert main([command, str(run), *flags, "--out", str(tmp_path / out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and named in error
    assert not (tmp_path / out).exists()


def test_reconstruct_refuses_a_picture_of_table_rows(tmp_path, capsys):
    np.save(tmp_path / "t.npy", np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32))
    assert main(["train", *TINY, "--dataset", str(tmp_path / "t.npy"), "--likelihood", "gaussian",
                 "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["reconstruct", str(tmp_path / "run"), "--out", str(tmp_path / "r.png")]) == 2
    assert ".npy or .csv" in capsys.readouterr().err
    assert main(["reconstruct", str(tmp_path / "run"), "--out", str(tmp_path / "r.npy")]) == 0
    assert torch.isfinite(torch.from_numpy(np.load(tmp_path / "r.npy"))).all()
