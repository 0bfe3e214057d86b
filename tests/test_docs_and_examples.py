import re
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


def test_every_example_is_tested():
    scripts = {path.name for path in (ROOT / "examples").glob("*.py")} - {"common.py", "burda_iwae.py"}
    assert scripts == set(EXAMPLES)


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line for line in readme.splitlines() if line.endswith("python -m pytest"))
    assert test_command in ci


def test_guide_custom_prior_snippet_runs(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in python_blocks(ROOT / "docs" / "guide.md"):
        exec(compile(block, "guide.md", "exec"), namespace)
    assert 0 < namespace["nll"].item() < 64 * 0.7
    assert namespace["vae"].prior.raw_df.item() != 1.0  # the prior's own parameter was trained


def test_burda_example_runs_a_tiny_schedule_on_digits():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "burda_iwae.py"), "--dataset", "digits",
                             "--objective", "iwae", "--k", "5", "--stages", "2", "--epoch-scale", "0.34",
                             "--num-samples", "20", "--limit", "30", "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "stage 1: 1 epochs" in result.stdout and "NLL (K=20)" in result.stdout
