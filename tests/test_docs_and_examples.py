import json
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), re.S)


def test_readme_python_api_snippet_runs(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(ROOT / "README.md")
    assert blocks, "the README shows the Python API"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["images"].shape == (16, 64)
    assert namespace["history"][-1]["val_neg_elbo"] < 40


EXAMPLES = {  # each example on digits for one tiny epoch, and what it must print and write
    "train_vae.py": (["--out", "{tmp}/run"], "test negative ELBO", ["run/manifold.png", "run/checkpoint.pt"]),
    "swap_parts.py": (["--pairs", "standard:bernoulli", "vamp:continuous-bernoulli", "--num-samples", "10",
                       "--limit", "20"], "| vamp | continuous-bernoulli | grayscale |", []),
    "conditional_digit.py": (["--digit", "4", "--out", "{tmp}/cvae"], "test accuracy",
                             ["cvae/4.png", "cvae/class_samples.png"]),
    "log_likelihood.py": (["--ks", "1", "10", "--limit", "20"], "K =    10: NLL", []),
    "score_your_own_vae.py": (["--ks", "1", "10", "--limit", "20"], "K =   10: NLL", []),
}


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs_one_tiny_epoch_offline(example, tmp_path):
    flags, printed, written = EXAMPLES[example]
    command = [sys.executable, str(ROOT / "examples" / example), "--dataset", "digits", "--epochs", "1",
               "--device", "cpu", *(flag.format(tmp=tmp_path) for flag in flags)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert printed in result.stdout
    for name in written:
        assert (tmp_path / name).is_file(), name


def test_tables_example_runs_one_epoch(tmp_path):
    import pandas as pd

    result = subprocess.run([sys.executable, str(ROOT / "examples" / "tables.py"), "--epochs", "1", "--device", "cpu",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for printed in ("species (categorical)", "sex (binary)", "year (categorical)",
                    "cells removed from 68 held-out rows", "accuracy", "RMSE", "1000 synthetic rows",
                    "-log p(x_obs) ="):
        assert printed in result.stdout, printed
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    incomplete, filled = pd.read_csv(tmp_path / "incomplete.csv"), pd.read_csv(tmp_path / "filled.csv")
    columns = ["species", "island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex",
               "year"]
    assert list(filled.columns) == columns and incomplete.isna().any().all() and not filled.isna().any().any()
    draws = pd.read_csv(tmp_path / "imputations.csv")
    assert list(draws.columns) == ["imputation", *columns] and len(draws) == 20 * len(incomplete)
    synthetic = pd.read_csv(tmp_path / "synthetic.csv")
    assert list(synthetic.columns) == columns and len(synthetic) == 1000
    assert set(synthetic["species"]) <= {"Adelie", "Chinstrap", "Gentoo"}


OWN_TESTS = {"burda_iwae.py": "test_burda_example_runs_a_tiny_schedule_on_digits",
             "tables.py": "test_tables_example_runs_one_epoch"}
"""The examples that take other flags than --dataset digits, each with a test of its own."""


def test_every_example_is_tested():
    scripts = {path.name for path in (ROOT / "examples").glob("*.py")} - {"common.py"}
    assert scripts == set(EXAMPLES) | set(OWN_TESTS)
    assert all(callable(globals().get(test)) for test in OWN_TESTS.values())


def test_the_readme_picture_is_small_and_drawn_by_its_script():
    picture = ROOT / "docs" / "images" / "digits.png"
    assert "](docs/images/digits.png)" in (ROOT / "README.md").read_text().split("\n## ")[0]  # the first screen
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size < 200_000
    figure = runpy.run_path(str(ROOT / "docs" / "make_readme_picture.py"))["readme_picture"](epochs=1)
    samples, manifold = (ax.get_images()[0].get_array() for ax in figure.axes)
    assert samples.shape == (10 * 9 + 1, 10 * 9 + 1) and manifold.shape == samples.shape  # 10 x 10 digits each
    assert samples.std() > 0.05 and manifold.std() > 0.05


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line for line in readme.splitlines() if line.endswith("python -m pytest"))
    assert test_command in ci


def test_burda_example_runs_a_tiny_schedule_on_digits():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "burda_iwae.py"), "--dataset", "digits",
                             "--objective", "iwae", "--k", "5", "--stages", "2", "--epoch-scale", "0.34",
                             "--num-samples", "20", "--limit", "30", "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "stage 1: 1 epochs" in result.stdout and "NLL (K=20)" in result.stdout


DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_theory_quotes_lines_that_are_in_the_code():
    quotes = re.findall(r"`(pyrovae/[\w/]+\.py)`: `([^`]+)`", (ROOT / "docs" / "theory.md").read_text())
    assert len(quotes) >= 10
    for path, code in quotes:
        assert code in (ROOT / path).read_text(), f"docs/theory.md quotes {path}: {code!r}, which is not there"


def test_cli_and_api_reference_are_up_to_date():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "make_reference.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def known_flags() -> set[str]:
    """Options of every pyrovae command, example and benchmark script, pytest's --runslow, pip's, torchrun's and
    TensorBoard's --logdir."""
    from pyrovae.cli import build_parser

    flags = {"--runslow", "--help", "--index-url", "--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint",
             "--rdzv-backend", "--standalone", "--logdir"}
    parser = build_parser()
    for command in (parser, *parser.commands.values()):
        flags |= {option for action in command.options for option in action.option_strings}
    for script in [*(ROOT / "examples").glob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
                   *(ROOT / "docs").glob("*.py")]:
        flags |= set(re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", script.read_text()))
    return flags


def test_every_flag_named_in_the_docs_exists():
    flags = known_flags()
    for doc in DOC_FILES:
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", doc.read_text()))
        assert named <= flags, f"{doc.name} names flags that nothing takes: {sorted(named - flags)}"


def test_every_pyrovae_command_in_the_docs_parses():
    from pyrovae.cli import build_parser

    commands = []
    for doc in DOC_FILES:
        for block in re.findall(r"```(?:bash|text)\n(.*?)```", doc.read_text(), re.S):
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                match = re.match(r"^(?:\.venv/bin/)?(?:torchrun .*?-m )?pyrovae (train|evaluate|sample|plot)\b(.*)",
                                 line)
                if match and "--help" not in line:
                    commands.append((doc.name, shlex.split(match.group(1) + match.group(2))))
    assert len(commands) >= 10
    for doc, argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{doc}: `pyrovae {' '.join(argv)}` does not parse")


def test_every_python_snippet_in_the_docs_runs(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    ran = {}
    for doc in DOC_FILES[1:]:  # the README's snippet has its own test
        namespace: dict = {}
        for block in python_blocks(doc):
            exec(compile(block, doc.name, "exec"), namespace)
        ran[doc.name] = namespace
    guide = ran["guide.md"]  # a custom prior, trained and evaluated
    assert 0 < guide["nll"].item() < 64 * 0.7
    assert guide["vae"].prior.raw_df.item() != 1.0  # the prior's own parameter was trained


@pytest.mark.slow
def test_the_benchmark_suite_runs_and_writes_its_results(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--device", "cpu",
                             "--results", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    figures = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {"svi_step", "log_likelihood", "scaling"} <= set(figures)
    assert [row["batch_size"] for row in figures["svi_step"]["steps"]] == [128, 128, 1024, 1024]
    assert {"ratio_to_canonical", "ratio_to_plain"} <= set(figures["svi_step"]["epoch"])
    assert "ratio_canonical_to_plain" in figures["log_likelihood"]
    assert 0 < figures["lock_seconds"] < 0.01 * figures["svi_step"]["epoch"]["pyrovae_epoch_seconds"]
    assert figures["scaling"]["rows"][1]["processes"] == 2 and "| figure |" in next(tmp_path.glob("*.md")).read_text()


def readme_metrics_keys() -> dict[str, set[str]]:
    """The README's list of ``metrics.jsonl`` keys: its bullets under "The keys of each `metrics.jsonl` row"."""
    readme = (ROOT / "README.md").read_text()
    listing = re.search(r"The keys of each `metrics\.jsonl` row[^\n]*\n\n((?:- [^\n]*\n)+)", readme)
    assert listing, "the README lists the keys of metrics.jsonl"
    keys = {}
    for line in listing[1].splitlines():
        case, names = line[2:].split(":", 1)
        keys[case] = set(re.findall(r"`([a-z_]+)`", names))
    return keys


def first_metrics_row(tmp_path, few_labels: bool) -> set[str]:
    import pyrovae

    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(48, 1, 4, 4, generator=generator).round()
    y = torch.arange(48) % 2
    data = pyrovae.from_arrays(x, y, labeled=8 if few_labels else None)
    labels = {"prior": "class-means", "num_classes": 2, "label_guide": "classifier"} if few_labels else {}
    vae = pyrovae.build_vae(pyrovae.ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,), **labels))
    pyrovae.fit(vae, data, pyrovae.TrainConfig(epochs=1, batch_size=16, device="cpu"), run_dir=tmp_path / "run",
                progress=False, verbose=False)
    return set(json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0]))


@pytest.mark.parametrize("few_labels", [False, True], ids=["plain", "few-labels"])
def test_the_readme_lists_the_metrics_that_fit_writes(tmp_path, few_labels):
    keys = readme_metrics_keys()
    assert set(keys) == {"every run", "runs without hidden labels, also", "few-label runs (`--labeled N`), also"}
    expected = keys["every run"] | keys["few-label runs (`--labeled N`), also" if few_labels
                                        else "runs without hidden labels, also"]
    assert first_metrics_row(tmp_path, few_labels) == expected
