"""What `pyrovae evaluate` and `pyrovae sample` say and write for few-label, conditional and table runs."""

import contextlib
import io
import json
import re

import numpy as np
import pytest

from pyrovae.cli import main

TINY = ["--hidden", "16", "--z-dim", "2", "--epochs", "1", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def few_label_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("few") / "run"
    assert main(["train", *TINY, "--conditional", "--labeled", "100", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    np.save(root / "table.npy", np.random.default_rng(0).normal(size=(80, 5)).astype(np.float32))
    out = root / "run"
    assert main(["train", *TINY, "--dataset", str(root / "table.npy"), "--likelihood", "gaussian",
                 "--out", str(out)]) == 0
    return out


def evaluate(run, capsys, *flags):
    capsys.readouterr()
    assert main(["evaluate", str(run), "--num-samples", "4", "--limit", "40", "--no-progress", *flags]) == 0
    return capsys.readouterr().out, json.loads((run / "eval.json").read_text())


@pytest.fixture(scope="module")
def few_label_evaluation(few_label_run):
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["evaluate", str(few_label_run), "--num-samples", "4", "--limit", "40", "--no-progress"]) == 0
    return printed.getvalue(), json.loads((few_label_run / "eval.json").read_text())


def test_a_conditional_models_negative_elbo_is_printed_as_given_the_label(few_label_evaluation):
    out, result = few_label_evaluation
    line, = (line for line in out.splitlines() if line.lstrip().startswith("negative ELBO"))
    assert "given the label" in line and f"{result['neg_elbo']:.3f}" in line
    assert {"neg_elbo", "nll", "nll_given_label", "accuracy", "bits_per_dim"} <= set(result)


def test_evaluate_of_a_conditional_model_says_first_that_it_scores_every_class(few_label_run, few_label_evaluation,
                                                                                 capsys):
    assert "K=4 samples per image x 10 classes" in few_label_evaluation[0].splitlines()[0]
    out, _ = evaluate(few_label_run, capsys, "--elbo-only")
    assert "the ELBO per image x 10 classes" in out.splitlines()[0]


def test_evaluate_of_a_table_says_rows_and_reports_no_bits_per_dim(table_run, capsys):
    out, result = evaluate(table_run, capsys)
    assert "nll" in result and "bits_per_dim" not in result and result["num_examples"] == 8
    assert "8 rows" in out and "images" not in out and "bits/dim" not in out
    line, = (line for line in out.splitlines() if "NLL" in line)
    assert f"{result['nll']:.3f}" in line


def test_sample_of_a_table_refuses_a_png_and_writes_npy_and_csv(table_run, tmp_path, capsys):
    assert main(["sample", str(table_run), "--out", str(tmp_path / "s.png")]) == 2
    assert "rows of a table" in capsys.readouterr().err and not (tmp_path / "s.png").exists()
    for name in ("s.npy", "s.csv"):
        assert main(["sample", str(table_run), "--n", "3", "--seed", "1", "--out", str(tmp_path / name)]) == 0
    npy, csv = np.load(tmp_path / "s.npy"), np.loadtxt(tmp_path / "s.csv", delimiter=",", ndmin=2)
    assert npy.shape == (3, 5) and np.allclose(csv, npy)


def test_sample_binary_writes_bernoulli_draws_of_the_means(few_label_run, tmp_path):
    means, draws = tmp_path / "means.npy", tmp_path / "draws.csv"
    assert main(["sample", str(few_label_run), "--n", "50", "--out", str(means)]) == 0
    assert main(["sample", str(few_label_run), "--n", "50", "--binary", "--out", str(draws)]) == 0
    means, draws = np.load(means), np.loadtxt(draws, delimiter=",")
    assert draws.shape == means.shape == (50, 64) and set(np.unique(draws)) == {0.0, 1.0}
    assert not set(np.unique(means)) <= {0.0, 1.0}


@pytest.mark.parametrize("which, out, message", [
    ("table", "s.npy", "--binary draws Bernoulli pixels.*gaussian likelihood"),
    ("few", "s.png", "--binary draws.*\\.npy or \\.csv"),
])
def test_sample_binary_is_refused_in_one_line_where_it_cannot_apply(which, out, message, request, tmp_path, capsys):
    run = request.getfixturevalue({"table": "table_run", "few": "few_label_run"}[which])
    assert main(["sample", str(run), "--binary", "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err)
    assert not (tmp_path / out).exists()
