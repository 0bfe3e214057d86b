"""One writer per run directory: a second one is refused in one line, readers are never blocked.

The quick tests hold a run's lock in this process (a second open of the lock file conflicts
like another process would) and try every command. The slow ones start real processes:
two writers within milliseconds of each other, twenty times, and ``evaluate`` in a loop
while training replaces the checkpoint.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import time

import pytest

from pyrovae.cli import main
from pyrovae.runs.lock import RunLock
from pyrovae.runs.rundir import RunDir

TRAIN = ["train", "--hidden", "16", "--z-dim", "2", "--threads", "1", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one-writer") / "run"
    assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    return out


def digest(folder):
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sorted(folder.iterdir()))).hexdigest()


def assert_in_use(err, run_dir, command, pid=None):
    """The refusal is one line naming the command, the run directory, the holder (its pid and start) and the fix."""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"pyrovae {command}: error: "), err
    assert str(run_dir) in err and "in use" in err, err
    holder = re.search(r"pid (\d+), started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", err)
    assert holder, err
    if pid is not None:
        assert int(holder[1]) == pid, err
    assert "--out" in err, err  # the way out: another run directory


def test_a_second_writer_is_refused_in_one_line_and_readers_are_not(run, tmp_path, capsys):
    before = digest(run)
    with RunLock(run):
        for argv in ([*TRAIN, "--epochs", "2", "--out", str(run), "--resume"],
                     ["plot", str(run), "--only", "samples"]):
            capsys.readouterr()
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert_in_use(err, run, argv[0], pid=os.getpid())
        assert digest(run) == before  # having written nothing

        assert main(["evaluate", str(run), "--elbo-only", "--limit", "20", "--no-progress"]) == 0
        assert json.loads((run / "eval.json").read_text())["num_examples"] == 20
        assert main(["plot", str(run), "--only", "samples", "--out", str(tmp_path)]) == 0
        assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.png")]) == 0
        assert {p.name for p in tmp_path.iterdir()} == {"samples.png", "s.png"}

        fresh = tmp_path / "fresh"
        with RunLock(fresh):
            capsys.readouterr()
            assert main([*TRAIN, "--epochs", "1", "--out", str(fresh)]) == 2
            assert_in_use(capsys.readouterr().err, fresh, "train", pid=os.getpid())
            assert not fresh.exists()
    assert not run.with_name("run.lock").exists() and not fresh.with_name("fresh.lock").exists()
    (run / "eval.json").unlink()


READ_ONLY = """
mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" || exit 99
exec "$2" -c "$3" "$1" "$4"
"""
COMMANDS = """
import contextlib, io, json, sys
from pyrovae.cli import main
run, elsewhere = sys.argv[1:]
results = []
for argv in (["evaluate", run, "--elbo-only", "--limit", "20", "--no-progress"],
             ["evaluate", run, "--elbo-only", "--limit", "20", "--no-progress", "--out", elsewhere + "/e.json"],
             ["plot", run, "--only", "samples"],
             ["plot", run, "--only", "samples", "--out", elsewhere],
             ["sample", run, "--n", "4", "--out", elsewhere + "/s.png"]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        results.append([main(argv), err.getvalue()])
print(json.dumps(results))
"""


def test_a_read_only_run_directory_is_named_in_one_line_and_out_writes_elsewhere(run, tmp_path):
    try:  # a read-only bind mount, in a mount namespace of its own: read-only even for root
        done = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", READ_ONLY, "sh", str(run),
                               sys.executable, COMMANDS, str(tmp_path)], capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        pytest.skip("needs unshare(1) for a read-only mount")
    if done.returncode == 99 or "unshare failed" in done.stderr or "Operation not permitted" in done.stderr:
        pytest.skip(f"this machine allows no read-only bind mount: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    (evaluate, evaluate_out, plot, plot_out, sample) = json.loads(done.stdout)
    for (code, err), command, written, fix in ((evaluate, "evaluate", f"{run}/eval.json", "--out FILE"),
                                               (plot, "plot", str(run), "--out DIR")):
        assert code == 2 and err.count("\n") == 1 and err.startswith(f"pyrovae {command}: error: "), err
        assert written in err and "Read-only file system" in err and fix in err, err
    assert [evaluate_out[0], plot_out[0], sample[0]] == [0, 0, 0]
    assert {p.name for p in tmp_path.iterdir()} == {"e.json", "samples.png", "s.png"}


def start_training(*args):
    return subprocess.Popen([sys.executable, "-m", "pyrovae", *TRAIN, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
def test_of_two_writers_started_together_one_proceeds_and_the_other_exits_2(tmp_path, resume):
    epochs = 12  # long enough that the first still writes when the second asks
    for repeat in range(20):
        out = tmp_path / f"run{repeat}"
        if resume:
            assert main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
        args = ["--epochs", str(epochs), "--out", str(out), *(["--resume"] if resume else [])]
        writers = [start_training(*args), start_training(*args)]  # within milliseconds of each other
        results = sorted((writer.wait(timeout=600), writer.stderr.read()) for writer in writers)
        assert [code for code, _ in results] == [0, 2], results
        assert_in_use(results[1][1], out, "train")
        assert [row["epoch"] for row in RunDir(out).read_metrics()] == list(range(1, epochs + 1))
        for writer in writers:
            writer.stdout.close()
            writer.stderr.close()


SAVING_COPIES = """
import sys, shutil, time
from pyrovae import cli
from pyrovae.runs.rundir import RunDir
copies = sys.argv[1]
real_save = RunDir.save_checkpoint
def save(self, checkpoint):
    real_save(self, checkpoint)
    shutil.copy(self.file("checkpoint.pt"), f"{copies}/{checkpoint.progress.epoch}.pt")
    time.sleep(0.1)  # an epoch of a real model: long enough for the evaluations to see many checkpoints
RunDir.save_checkpoint = save
raise SystemExit(cli.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_evaluate_in_a_loop_while_training_scores_only_complete_checkpoints(tmp_path):
    out, copies = tmp_path / "run", tmp_path / "copies"
    copies.mkdir()
    training = subprocess.Popen([sys.executable, "-c", SAVING_COPIES, str(copies), *TRAIN, "--epochs", "40",
                                 "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    evaluate = ["--elbo-only", "--limit", "100", "--no-progress", "--out", str(tmp_path / "eval.json")]
    while not (out / "checkpoint.pt").exists():
        time.sleep(0.01)
    scores = []
    while training.poll() is None:
        assert main(["evaluate", str(out), *evaluate]) == 0
        scores.append(json.loads((tmp_path / "eval.json").read_text())["neg_elbo"])
    assert training.returncode == 0, training.stderr.read()
    complete = set()
    for copy in copies.iterdir():  # each checkpoint training wrote, evaluated alone
        (out / "checkpoint.pt").write_bytes(copy.read_bytes())
        assert main(["evaluate", str(out), *evaluate]) == 0
        complete.add(json.loads((tmp_path / "eval.json").read_text())["neg_elbo"])
    assert len(scores) >= 20 and len(set(scores)) >= 5, scores
    assert set(scores) <= complete
