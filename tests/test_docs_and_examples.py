import re
import subprocess
import sys
from pathlib import Path

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


def test_train_example_runs_one_epoch(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "train_vae.py"), "--epochs", "1",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "test negative ELBO" in result.stdout
    assert {"samples.png", "reconstructions.png", "checkpoint.pt"} <= {p.name for p in (tmp_path / "run").iterdir()}


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
