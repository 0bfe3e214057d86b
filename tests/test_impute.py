"""`pyrovae impute` and `pyrovae.impute`: a table's missing cells filled, the rest of the file as it was; and
`pyrovae sample` of a table run, rows in the table's own columns."""

import json

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from cli_helpers import TINY

import pyrovae
from pyrovae import load_run
from pyrovae.cli import main
from pyrovae.data.table_output import read_cells_as_written
from pyrovae.data.tables import MISSING, read_table
from pyrovae.defaults import TABLE_DEFAULTS

N = 120


def write_table(path, rows=N, seed=0):
    """A mixed table with missing cells, written with text a round trip through floats would change: numbers with
    trailing zeros, a quoted level holding a comma, whole numbers in a column with gaps."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=rows)
    lines = ["length,mass,island,male,note"]
    for i in range(rows):
        cells = [f"{40 + 5 * z[i]:.2f}", str(int(3000 + 400 * z[i])), ['"Dream, north"', "Biscoe", "Torgersen"][i % 3],
                 ["True", "False"][i % 2], ["a", "b", "c", "d"][(i // 3) % 4]]
        if i % 5 == 1:
            cells[i % 4] = ["", "NA", "NaN", ""][i % 4]
        if i % 7 == 2:
            cells[4] = ""
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("impute")
    table = write_table(folder / "table.csv")
    assert main(["train", *TINY, "--dataset", str(table), "--out", str(folder / "run")]) == 0
    return folder / "run", table


def test_impute_fills_every_missing_cell_and_copies_the_observed_ones_byte_for_byte(trained, tmp_path):
    run, table = trained
    out = tmp_path / "filled.csv"
    assert main(["impute", str(run), "--dataset", str(table), "--out", str(out), "--num-samples", "20"]) == 0
    before, after = read_cells_as_written(table), read_cells_as_written(out)
    assert list(after.columns) == list(before.columns) and after.shape == before.shape
    present = ~before.isin(MISSING)
    assert (after[present] == before[present]).to_numpy()[present.to_numpy()].all()
    assert not after.isin(MISSING).to_numpy().any()
    typed_before, typed_after = read_table(table), read_table(out)
    widened = {"mass": "int64", "male": "bool"}  # whole numbers and booleans that only the gaps made float, object
    assert {c: str(t) for c, t in typed_before.dtypes.items() if c in widened} == {"mass": "float64", "male": "object"}
    assert {c: str(t) for c, t in typed_after.dtypes.items()} == {**{c: str(t) for c, t in typed_before.dtypes.items()},
                                                                  **widened}
    assert set(typed_after["island"]) <= set(typed_before["island"].dropna())
    assert out.read_text().count('"Dream, north"') == after["island"].eq("Dream, north").sum() > 0


def test_multiple_imputations_are_numbered_and_each_keeps_the_observed_cells(trained, tmp_path):
    run, table = trained
    out = tmp_path / "filled.csv"
    assert main(["impute", str(run), "--dataset", str(table), "--out", str(out), "--num-samples", "20",
                 "--draws", "3"]) == 0
    before, after = read_cells_as_written(table), read_cells_as_written(out)
    assert list(after.columns) == ["imputation", *before.columns] and len(after) == 3 * len(before)
    assert after["imputation"].tolist() == [str(m) for m in (1, 2, 3) for _ in range(len(before))]
    present = ~before.isin(MISSING).to_numpy()
    for m in range(3):
        copy = after.iloc[m * len(before):(m + 1) * len(before), 1:].to_numpy()
        assert (copy[present] == before.to_numpy()[present]).all() and not np.isin(copy, MISSING).any()
    draws = read_table(out).groupby("imputation")["length"].apply(list).tolist()
    assert draws[0] != draws[1], "the imputations are drawn, not copies of one another"


def test_imputing_to_parquet_keeps_the_inputs_dtypes_and_values(trained, tmp_path):
    run, table = trained
    out = tmp_path / "filled.parquet"
    assert main(["impute", str(run), "--dataset", str(table), "--out", str(out), "--num-samples", "20"]) == 0
    before, after = read_table(table), pd.read_parquet(out)
    assert {c: str(t) for c, t in after.dtypes.items()} == {**{c: str(t) for c, t in before.dtypes.items()},
                                                            "mass": "int64", "male": "bool"}
    assert not after.isna().any().any()
    pd.testing.assert_frame_equal(after.astype(object)[before.notna()], before.astype(object)[before.notna()])


def test_python_impute_of_a_dataframe_matches_the_command_line(trained, tmp_path):
    run, table = trained
    vae, frame = load_run(run, data=False).vae, read_table(table)
    pyro.set_rng_seed(0)
    filled = pyrovae.impute(vae, frame, num_samples=20)
    assert main(["impute", str(run), "--dataset", str(table), "--out", str(tmp_path / "f.parquet"),
                 "--num-samples", "20", "--seed", "0"]) == 0
    pd.testing.assert_frame_equal(filled, pd.read_parquet(tmp_path / "f.parquet"))
    encoded = vae.schema.encode(frame, "t")
    assert torch.equal(pyrovae.impute(vae, encoded, 5).isnan(), torch.zeros_like(encoded, dtype=torch.bool))


@pytest.mark.parametrize("change,words", [
    (lambda f: f.drop(columns=["male"]), ["missing column(s) 'male'"]),
    (lambda f: f.assign(extra=1), ["extra column(s) 'extra'"]),
    (lambda f: f.assign(island=["Atlantis"] + list(f["island"][1:])), ["'island'", "'Atlantis'", "levels"]),
    (lambda f: f.assign(mass=["heavy"] + list(f["mass"][1:])), ["'mass'", "'heavy'", "finite number"]),
], ids=["missing-column", "extra-column", "unseen-level", "text-in-a-number"])
def test_a_table_unlike_the_runs_is_refused_in_one_line_and_nothing_is_written(trained, tmp_path, capsys, change,
                                                                                words):
    run, table = trained
    bad = tmp_path / "bad.csv"
    change(read_table(table)).to_csv(bad, index=False)
    out = tmp_path / "filled.csv"
    out.write_text("an earlier file\n")
    assert main(["impute", str(run), "--dataset", str(bad), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(bad) in error and all(word in error for word in words), error
    assert out.read_text() == "an earlier file\n" and sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv",
                                                                                                   "filled.csv"]


def test_impute_refuses_an_image_run_and_bad_flags_in_one_line(trained, tmp_path, capsys):
    run, table = trained
    images = tmp_path / "images"
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((40, 4), dtype=np.float32))
    assert main(["train", *TINY, "--dataset", str(tmp_path / "x.npy"), "--out", str(images)]) == 0
    capsys.readouterr()
    for argv, words in [([str(images), "--dataset", str(table), "--out", str(tmp_path / "f.csv")],
                         ["not trained on a .csv or .parquet table"]),
                        ([str(run), "--dataset", str(table), "--out", str(tmp_path / "f.npy")], [".csv", ".parquet"]),
                        ([str(run), "--dataset", str(table), "--out", str(tmp_path / "f.csv"), "--draws", "0"],
                         ["--draws"])]:
        assert main(["impute", *argv]) == 2
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and all(word in error for word in words), error
    assert not (tmp_path / "f.csv").exists()


def test_sample_writes_rows_in_the_tables_columns_units_and_levels(trained, tmp_path):
    run, table = trained
    original = read_table(table)
    assert main(["sample", str(run), "--n", "50", "--out", str(tmp_path / "rows.csv")]) == 0
    rows = read_table(tmp_path / "rows.csv")
    assert list(rows.columns) == list(original.columns) and len(rows) == 50 and not rows.isna().any().any()
    assert set(rows["island"]) <= set(original["island"].dropna()) and set(rows["male"]) <= {True, False}
    assert abs(rows["mass"].mean() - original["mass"].mean()) < 10 * original["mass"].std()
    assert main(["sample", str(run), "--n", "50", "--out", str(tmp_path / "rows.parquet")]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "rows.parquet"), rows, check_dtype=False, rtol=1e-6)
    assert main(["sample", str(run), "--n", "50", "--out", str(tmp_path / "rows.npy")]) == 0
    encoded = np.load(tmp_path / "rows.npy")
    assert encoded.shape == (50, 5) and set(np.unique(encoded[:, 2])) <= {0.0, 1.0, 2.0}
    for flags in (["--binary"], ["--class", "1"], ["--out", str(tmp_path / "rows.png")]):
        assert main(["sample", str(run), "--n", "5", "--out", str(tmp_path / "more.csv"), *flags]) == 2
    assert not (tmp_path / "more.csv").exists() and not (tmp_path / "rows.png").exists()


def test_a_table_run_end_to_end_evaluates_rows_and_draws_the_table_pictures(trained, tmp_path, capsys):
    run, table = trained
    pictures = {"training_curves", "latent_scatter", "kl_per_dim", "marginals", "correlations", "missingness"}
    assert {f"{name}.png" for name in pictures} <= {path.name for path in run.iterdir()}
    assert not {"samples.png", "manifold.png"} & {path.name for path in run.iterdir()}
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--num-samples", "20", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rows of the test split" in printed and "bits/dim" not in printed and "categorical" in printed
    report = json.loads(out.read_text())
    assert np.isfinite(report["nll"]) and report["nll_stderr"] > 0 and "bits_per_dim" not in report
    assert set(report["nll_by_type"]) == {"real", "binary", "categorical"}
    assert main(["plot", str(run), "--only", "latent_scatter", "--color-by", "male", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "latent_scatter.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["plot", str(run), "--color-by", "length", "--out", str(tmp_path / "p")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--color-by length" in error and "'island'" in error, error


def test_a_table_trains_with_the_table_defaults_where_no_flag_is_given(trained):
    run, _ = trained
    settings = json.loads((run / "config.json").read_text())
    assert settings["model"]["hidden"] == [16]  # given
    assert {name: settings["train"][name] for name in ("elbo", "particles", "batch_size")} == {
        "elbo": TABLE_DEFAULTS["elbo"], "particles": TABLE_DEFAULTS["particles"],
        "batch_size": TABLE_DEFAULTS["batch_size"]}
    assert TABLE_DEFAULTS["batch_size"] != pyrovae.TrainConfig().batch_size
