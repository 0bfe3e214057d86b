"""Faults lose at most one epoch: SIGKILL, Ctrl-C, corrupt or malicious files, NaN and infinity, no memory left.

The kill tests run ``pyrovae train`` in a subprocess that sends itself the signal at a
chosen training step or in the middle of writing a checkpoint (a real SIGKILL, at a
reproducible moment), then resume it and compare with a run that was never stopped.
"""

import errno
import json
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyrovae import DataConfig, ModelConfig, TrainConfig, build_vae, fit
from pyrovae.cli import main
from pyrovae.data.datasets import load_dataset
from pyrovae.runs.checkpoint import Checkpoint
from pyrovae.runs.load import load_run
from pyrovae.runs.rundir import CheckpointError, RunDir
from pyrovae.training.step import SVIStep
from pyrovae.training.stopping import TrainingInterrupted

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # random bytes as a pickle

TRAIN = ["train", "--epochs", "3", "--hidden", "32", "--z-dim", "2", "--threads", "1", "--no-progress",
         "--device", "cpu"]
STEPS_PER_EPOCH = 11  # 1347 digits training images in batches of 128

KILLING_RUN = """
import os, signal, sys
from pyrovae import cli
from pyrovae.training.step import SVIStep

mode, at = sys.argv[1], int(sys.argv[2])
count = [0]
if mode == "save":  # die halfway through writing checkpoint number `at` to disk
    real_write = os.write
    def write(fd, data):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("checkpoint.pt."):
            count[0] += 1
            if count[0] == at:
                real_write(fd, bytes(data[:len(data) // 2]))
                os.fsync(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return real_write(fd, data)
    os.write = write
else:  # send signal `mode` to ourselves during training step number `at`
    real_step = SVIStep.__call__
    def step(self, *args, **kwargs):
        count[0] += 1
        if count[0] == at:
            os.kill(os.getpid(), getattr(signal, mode))
        return real_step(self, *args, **kwargs)
    SVIStep.__call__ = step
raise SystemExit(cli.main(sys.argv[3:]))
"""

def run_with_fault(mode, at, out):
    return subprocess.run([sys.executable, "-c", KILLING_RUN, mode, str(at), *TRAIN, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)


def weights(run_dir):
    return RunDir(run_dir).load_checkpoint().model


def metrics_without_timing(run_dir):
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in RunDir(run_dir).read_metrics()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "straight"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("mode,at,epochs_kept", [  # 10 s each: two processes train; the default run keeps one
    ("SIGKILL", STEPS_PER_EPOCH + 5, 1),  # in the middle of epoch 2: epoch 1 survives
    pytest.param("save", 2, 1, marks=pytest.mark.slow),  # halfway through writing epoch 2's checkpoint
    pytest.param("SIGINT", STEPS_PER_EPOCH + 5, 1, marks=pytest.mark.slow),  # Ctrl-C saves the position in epoch 2
    pytest.param("SIGTERM", 2 * STEPS_PER_EPOCH + 1, 2, marks=pytest.mark.slow),
], ids=["sigkill-mid-epoch", "sigkill-mid-checkpoint-write", "sigint-mid-epoch", "sigterm-mid-epoch"])
def test_resume_after_a_fault_reproduces_the_uninterrupted_run(uninterrupted, tmp_path, mode, at, epochs_kept):
    out = tmp_path / "run"
    stopped = run_with_fault(mode, at, out)
    if mode in ("SIGINT", "SIGTERM"):
        assert stopped.returncode == 130, stopped.stderr
        assert f"{mode} received" in stopped.stderr and "--resume" in stopped.stderr
        assert "Traceback" not in stopped.stderr
        partial = RunDir(out).load_checkpoint().progress.partial
        assert partial["step"] == at - (epochs_kept * STEPS_PER_EPOCH)
    else:
        assert stopped.returncode == -signal.SIGKILL
        assert out.with_name("run.lock").is_file()  # the killed holder's lock file stays; its lock went with it
    assert len(RunDir(out).read_metrics()) >= epochs_kept
    assert RunDir(out).load_checkpoint().progress.epoch == epochs_kept

    resumed = subprocess.run([sys.executable, "-m", "pyrovae", *TRAIN, "--out", str(out), "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, uninterrupted)


def assert_same_run(run_dir, expected_dir):
    """The run in ``run_dir`` has the metrics and weights of ``expected_dir``, and no leftovers of a writer."""
    assert metrics_without_timing(run_dir) == metrics_without_timing(expected_dir)
    expected = weights(expected_dir)
    for name, value in weights(run_dir).items():
        assert torch.equal(value, expected[name]), name
    assert not list(run_dir.glob("*.tmp")) and not run_dir.with_name(run_dir.name + ".lock").exists()


FULL_DISK = {  # the file, and which write of it finds the disk full
    "checkpoint.pt.": 2,  # epoch 2's checkpoint: epoch 1's stays
    "metrics.jsonl": 2,   # epoch 2's row, after its checkpoint
    "samples.png.": 1,    # the first picture, after training
}


@pytest.mark.parametrize("name", FULL_DISK)
def test_a_full_disk_stops_training_in_one_line_and_resume_continues_exactly(uninterrupted, tmp_path, name,
                                                                            monkeypatch, capsys):
    out, writes, real_write = tmp_path / "run", [], os.write

    def write(fd, data):  # the disk fills up halfway through that write
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(name):
            writes.append(len(data))
            if len(writes) == FULL_DISK[name]:
                return real_write(fd, bytes(data[:len(data) // 2]))
            if len(writes) > FULL_DISK[name]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    assert main([*TRAIN, "--out", str(out)]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    needed = writes[FULL_DISK[name] - 1]
    assert err.count("\n") == 1 and err.startswith("pyrovae train: error: no space left"), err
    assert f"{out} for {name.strip('.')}" in err and f"needs {needed:,} bytes" in err, err  # what, where, how much
    assert f"`pyrovae train --out {out} --resume`" in err, err  # the way to continue
    assert not list(out.glob("*.tmp"))
    RunDir(out).load_checkpoint()
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 0
    assert_same_run(out, uninterrupted)


def test_ctrl_c_in_python_raises_after_saving_and_resume_finishes_the_epoch(tmp_path, monkeypatch):
    data = load_dataset(DataConfig())
    config = TrainConfig(epochs=2, device="cpu")

    def model(seed=0):
        torch.manual_seed(seed)
        return build_vae(ModelConfig(image_shape=(1, 8, 8), z_dim=2, hidden=(16,)))

    straight = model()
    fit(straight, data, config, run_dir=tmp_path / "straight", progress=False)

    real_step, calls = SVIStep.__call__, []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(SVIStep, "__call__", step)
    with pytest.raises(TrainingInterrupted, match="SIGINT received: training stopped in epoch 1 after step 4"):
        fit(model(), data, config, run_dir=tmp_path / "stopped", progress=False)
    monkeypatch.undo()
    resumed = model(seed=5)
    history = fit(resumed, data, config, run_dir=tmp_path / "stopped", resume=True, progress=False)
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))


# --- files that are damaged, foreign or hostile ---------------------------------------------------

class Payload:
    """Unpickled unsafely, this creates a marker file: proof that the checkpoint ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def good_state(run_dir):
    return RunDir(run_dir).load_checkpoint().to_state()


CHECKPOINT_DAMAGE = {
    "empty file": lambda run, ckpt: ckpt.write_bytes(b""),
    "truncated": lambda run, ckpt: ckpt.write_bytes(ckpt.read_bytes()[:len(ckpt.read_bytes()) // 2]),
    "random bytes": lambda run, ckpt: ckpt.write_bytes(os.urandom(4096)),
    "zip header then garbage": lambda run, ckpt: ckpt.write_bytes(b"PK\x03\x04" + os.urandom(500)),
    "a bare state_dict": lambda run, ckpt: torch.save(good_state(run)["model"], ckpt),
    "a list": lambda run, ckpt: torch.save([1, 2, 3], ckpt),
    "epoch tampered to text": lambda run, ckpt: torch.save({**good_state(run), "epoch": "3"}, ckpt),
    "weights replaced by numbers": lambda run, ckpt: torch.save({**good_state(run), "model": {"w": 1.0}}, ckpt),
    "weights of another shape": lambda run, ckpt: ckpt.write_bytes(Checkpoint.from_state(  # with its digest
        {**good_state(run), "model": {k: v[..., :1] for k, v in good_state(run)["model"].items()}}, ckpt).to_bytes()),
}


@pytest.fixture
def trained(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--hidden", "16", "--z-dim", "2", "--no-progress", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE, ids=list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoint_is_refused_by_every_command_in_one_line(trained, damage, capsys):
    checkpoint = trained / "checkpoint.pt"
    CHECKPOINT_DAMAGE[damage](trained, checkpoint)
    with pytest.raises(CheckpointError, match=str(checkpoint)):
        load_run(trained)
    for argv in (["evaluate", str(trained), "--elbo-only"], ["plot", str(trained)],
                 ["sample", str(trained), "--out", str(trained / "s.png")],
                 ["train", "--out", str(trained), "--resume", "--epochs", "2", "--no-progress"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert str(trained) in err and err.count("\n") == 1, err


def test_a_pickle_that_runs_code_is_refused_without_running_it(trained, tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({**good_state(trained), "epoch": Payload(marker)}, trained / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="untrusted source"):
        load_run(trained)
    with pytest.raises(CheckpointError):
        fit(build_vae(ModelConfig(image_shape=(1, 8, 8), z_dim=2, hidden=(16,))), load_dataset(
            DataConfig()), TrainConfig(epochs=2), run_dir=trained, resume=True, progress=False)
    assert not marker.exists()
    torch.load(trained / "checkpoint.pt", weights_only=False)  # the payload is live: unsafe loading runs it
    assert marker.exists()
    with open(trained / "checkpoint.pt", "wb") as f:  # the same payload as a bare pickle
        pickle.dump(Payload(tmp_path / "bare"), f)
    with pytest.raises(CheckpointError):
        load_run(trained)
    assert not (tmp_path / "bare").exists()


def edit_config(run, change):
    config = json.loads((run / "config.json").read_text())
    change(config)
    (run / "config.json").write_text(json.dumps(config))


CONFIG_DAMAGE = {
    "not JSON": (lambda run: (run / "config.json").write_text("{'model': "), "not valid JSON"),
    "a list": (lambda run: (run / "config.json").write_text("[1, 2]"), "not a pyrovae run config"),
    "foreign sections": (lambda run: (run / "config.json").write_text('{"optimizer": {}}'), "expected the sections"),
    "unknown prior": (lambda run: edit_config(run, lambda c: c["model"].update(prior="flow")), "unknown prior 'flow'"),
    "unknown likelihood": (lambda run: edit_config(run, lambda c: c["model"].update(likelihood="poisson")),
                           "unknown likelihood 'poisson'"),
    "unknown key": (lambda run: edit_config(run, lambda c: c["model"].update(exec="import os")),
                    "unknown key.*'exec'"),
    "wrong type": (lambda run: edit_config(run, lambda c: c["model"].update(z_dim="2")), "z_dim must be int"),
    "bad value": (lambda run: edit_config(run, lambda c: c["model"].update(z_dim=-1)), "z_dim must be at least 1"),
    "bad data section": (lambda run: edit_config(run, lambda c: c["data"].update(dataset="etc")),
                         "unknown dataset"),
}


@pytest.mark.parametrize("damage", CONFIG_DAMAGE, ids=list(CONFIG_DAMAGE))
def test_damaged_config_is_refused_naming_the_file_and_the_problem(trained, damage, capsys):
    change, message = CONFIG_DAMAGE[damage]
    change(trained)
    for argv in (["evaluate", str(trained), "--elbo-only"], ["plot", str(trained)],
                 ["train", "--out", str(trained), "--resume", "--epochs", "2", "--no-progress"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "config.json" in err and re.search(message, err) and err.count("\n") == 1, err


def test_a_half_written_metrics_line_is_named_and_resume_repairs_it(trained, capsys):
    with open(trained / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # killed mid-append
    assert main(["plot", str(trained), "--only", "training_curves"]) == 2
    assert "line 2 is not JSON" in capsys.readouterr().err
    assert main(["train", "--out", str(trained), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert [row["epoch"] for row in RunDir(trained).read_metrics()] == [1, 2]


# --- NaN and infinity ------------------------------------------------------------------------------

class Poisoned(torch.nn.Module):
    """Wraps a decoder; on chosen training calls makes the loss (or only the gradients) NaN."""

    def __init__(self, decoder, bad_calls, where):
        super().__init__()
        self.decoder, self.bad_calls, self.where, self.calls = decoder, set(bad_calls), where, 0

    def forward(self, z):
        out = self.decoder(z)
        if not self.training:
            return out
        self.calls += 1
        if self.calls in self.bad_calls:
            if self.where == "loss":
                return out * float("nan")
            out.register_hook(lambda grad: grad * float("inf"))  # a finite loss with infinite gradients
        return out


def poisoned_vae(bad_calls, where):
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(image_shape=(1, 8, 8), z_dim=2, hidden=(16,)))
    vae.decoder = Poisoned(vae.decoder, bad_calls, where)
    return vae


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_nonfinite_step_stops_training_naming_epoch_and_step(tmp_path, where):
    data = load_dataset(DataConfig())
    vae = poisoned_vae({STEPS_PER_EPOCH + 4}, where)
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 4 of 11.*still holds the state after epoch 1"
                                                 r".*lr=0.0001, now 0.001.*kl_warmup=10.*skip_nonfinite=N"):
        fit(vae, data, TrainConfig(epochs=3, device="cpu"), run_dir=tmp_path, progress=False)
    checkpoint = RunDir(tmp_path).load_checkpoint()
    assert checkpoint.progress.epoch == 1 and all(torch.isfinite(v).all() for v in checkpoint.model.values())
    assert [row["epoch"] for row in RunDir(tmp_path).read_metrics()] == [1]


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_behind(tmp_path):
    with pytest.raises(FloatingPointError, match="nothing was saved"):
        fit(poisoned_vae({3}, "loss"), load_dataset(DataConfig()), TrainConfig(epochs=2, device="cpu"),
            run_dir=tmp_path / "run", progress=False)
    assert not any(tmp_path.iterdir())  # neither the run directory nor its lock file


def test_skip_nonfinite_skips_up_to_n_bad_batches_then_stops(tmp_path):
    data = load_dataset(DataConfig())
    history = fit(poisoned_vae({3, STEPS_PER_EPOCH + 2}, "gradient"), data,
                  TrainConfig(epochs=2, device="cpu", skip_nonfinite=2), run_dir=tmp_path / "ok", progress=False)
    assert [row["skipped_batches"] for row in history] == [1, 1]
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "ok").values())
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 2 .*2 bad batches so far, more than "
                                                 r"skip_nonfinite=1"):
        fit(poisoned_vae({3, STEPS_PER_EPOCH + 2}, "loss"), data, TrainConfig(epochs=2, device="cpu", skip_nonfinite=1),
            run_dir=tmp_path / "stops", progress=False)


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough memory: you tried to "
                 "allocate 3200000000000 bytes."),
], ids=["torch-out-of-memory", "cpu-allocator"])
def test_out_of_memory_stops_training_in_one_line_and_resume_continues_exactly(uninterrupted, tmp_path, error,
                                                                               monkeypatch, capsys):
    out, steps, real_step = tmp_path / "run", [], SVIStep.__call__

    def step(self, *args, **kwargs):  # memory runs out once, at step 5 of epoch 2
        steps.append(1)
        if len(steps) == STEPS_PER_EPOCH + 5:
            raise error
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(SVIStep, "__call__", step)
    assert main([*TRAIN, "--out", str(out)]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pyrovae train: error: out of memory"), err
    assert f"epoch 2, step 5 of {STEPS_PER_EPOCH}" in err, err  # where it stopped
    assert "--batch-size 128" in err and "--particles 1" in err, err  # the settings that decide the memory
    assert f"{out}/checkpoint.pt" in err and "after epoch 1" in err, err  # what was kept
    assert "Lower --batch-size" in err and "--resume" in err and f"--out {out}" in err, err  # the fix
    assert main([*TRAIN, "--out", str(out), "--resume"]) == 0
    assert_same_run(out, uninterrupted)


def test_an_error_that_is_not_out_of_memory_is_not_taken_for_one(tmp_path, monkeypatch):
    def step(self, *args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)")

    monkeypatch.setattr(SVIStep, "__call__", step)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main([*TRAIN, "--out", str(tmp_path / "run")])
