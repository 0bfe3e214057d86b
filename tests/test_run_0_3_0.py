"""A run directory written by pyrovae 0.3.0 (tests/data/run-0.3.0: 8x8 digits, 2 epochs) still loads,
evaluates and resumes, to the numbers 0.3.0 itself gave."""

import json
import shutil
from pathlib import Path

import pytest

from pyrovae import load_run
from pyrovae.cli import main

STORED = Path(__file__).parent / "data" / "run-0.3.0"
# What pyrovae 0.3.0 printed for this run: `evaluate --num-samples 50 --limit 100`, then
# `train --resume --epochs 3` (epoch 3's row).
EVALUATED = {"neg_elbo": 43.922786712646484, "nll": 43.5249137878418}
RESUMED = {"train_loss": 43.62257766723633, "val_neg_elbo": 43.037845052083334}


@pytest.fixture
def run(tmp_path):
    return Path(shutil.copytree(STORED, tmp_path / "run"))


def test_a_0_3_0_run_loads_and_evaluates_as_it_did(run, tmp_path):
    loaded = load_run(run)
    assert [row["epoch"] for row in loaded.metrics] == [1, 2] and loaded.vae.z_dim == 2
    assert main(["evaluate", str(run), "--num-samples", "50", "--limit", "100", "--no-progress",
                 "--out", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert {key: report[key] for key in EVALUATED} == pytest.approx(EVALUATED, rel=1e-6)


def test_a_0_3_0_run_resumes_to_the_numbers_0_3_0_gave(run):
    assert main(["train", "--resume", "--epochs", "3", "--out", str(run), "--threads", "1", "--no-progress",
                 "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert {key: rows[-1][key] for key in RESUMED} == pytest.approx(RESUMED, rel=1e-6)
