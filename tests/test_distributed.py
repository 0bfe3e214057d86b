"""Data-parallel training and evaluation (DDP over gloo on the CPU), and a training loop that never
waits for the device inside an epoch."""

import json
import os
import socket
import subprocess
import sys

import pyro
import pytest
import torch

from pyrovae import DataConfig, ModelConfig, TrainConfig, build_vae, fit, load_dataset
from pyrovae.distributed import SINGLE, Processes, shard
from pyrovae.runs.rundir import RunDir
from pyrovae.training.loop import Trainer

WORKER = """
import sys
import pyro, torch
from pyrovae import ModelConfig, TrainConfig, build_vae, fit, from_arrays

# No reparameterization noise: z = loc. Each rank would otherwise draw its own noise, and the
# comparison is about the data split, the loss scale and the gradient all-reduce.
import pyro.distributions as dist
dist.Normal.rsample = lambda self, sample_shape=(): self.loc.expand(self._extended_shape(sample_shape))
torch.set_num_threads(1)
images = torch.bernoulli(torch.full((80, 16), 0.4), generator=torch.Generator().manual_seed(0))
data = from_arrays(images, torch.arange(80) % 3, val_fraction=0.2)  # 64 training images
pyro.set_rng_seed(0)
vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,), prior=sys.argv[2], num_classes=3))
fit(vae, data, TrainConfig(epochs=2, batch_size=16, device="cpu", kl_balance=float(sys.argv[3]) or None),
    progress=False)
if int(__import__("os").environ.get("RANK", "0")) == 0:
    torch.save(vae.state_dict(), sys.argv[1])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("prior,kl_balance", [("standard", 0), ("class-means", 1e-3)])
def test_two_gloo_processes_match_one_process_on_the_concatenated_batches(tmp_path, prior, kl_balance):
    args = [sys.executable, "-c", WORKER]
    single = subprocess.run([*args, str(tmp_path / "single.pt"), prior, str(kl_balance)],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    port = str(free_port())
    workers = [subprocess.Popen([*args, str(tmp_path / "ddp.pt"), prior, str(kl_balance)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
                                     "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": port})
               for rank in range(2)]
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr
    one, two = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5, rtol=0), name
    pyro.set_rng_seed(0)
    initial = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,), prior=prior, num_classes=3))
    assert not all(torch.allclose(one[n], value) for n, value in initial.state_dict().items())  # it trained


def test_shards_are_disjoint_equal_and_cover_the_order():
    order = torch.randperm(11)
    shards = [shard(order, Processes(rank, 3)) for rank in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded with the order's head to 12
    assert set(torch.cat(shards).tolist()) == set(order.tolist())
    assert torch.equal(shard(order, SINGLE), order)


def torchrun(*args, cwd):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "pyrovae", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.slow  # four torchrun launches: 30 s
def test_torchrun_writes_one_run_directory_resumes_and_evaluates_like_one_process(tmp_path):
    out = tmp_path / "run"
    trained = torchrun("train", "--device", "cpu", "--epochs", "1", "--hidden", "32", "--z-dim", "2",
                       "--no-progress", "--out", str(out), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".png")) == [
        "checkpoint.pt", "config.json", "metrics.jsonl"]
    assert list(tmp_path.iterdir()) == [out]  # no second run directory, no stray files
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1]
    assert trained.stdout.count("done:") == 1  # rank 0 alone reports

    resumed = torchrun("train", "--device", "cpu", "--epochs", "2", "--out", str(out), "--resume", "--no-progress",
                       cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert len(RunDir(out).load_checkpoint().rng["ranks"]) == 2

    evaluated = torchrun("evaluate", str(out), "--num-samples", "50", "--no-progress", "--device", "cpu", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    parallel = json.loads((out / "eval.json").read_text())
    subprocess.run([sys.executable, "-m", "pyrovae", "evaluate", str(out), "--num-samples", "50", "--no-progress"],
                   check=True, capture_output=True, timeout=300)
    assert json.loads((out / "eval.json").read_text()) == parallel  # the same seed, the same numbers


def test_an_epoch_never_reads_from_the_device(monkeypatch):
    """The loss, the finiteness flags and the KL sums stay on the device until the epoch ends.

    (Pyro checks the model and guide on the very first step, reading values; the second
    epoch shows the steady state.)
    """
    data = load_dataset(DataConfig())
    vae = build_vae(ModelConfig(image_shape=(1, 8, 8), z_dim=2, hidden=(16,)))
    reads_per_epoch = []
    train_epoch = Trainer._train_epoch

    def counting(self, *args):
        steps = [state["step"] for state in self.optimizer.state.values()]  # Adam's host-side counters
        originals = {name: getattr(torch.Tensor, name) for name in ("item", "__bool__", "tolist", "__float__",
                                                                     "__int__", "__index__")}
        reads = []

        def counted(name):
            def read(tensor, *a):
                if not any(tensor is step for step in steps):
                    reads.append(name)
                return originals[name](tensor, *a)
            return read

        for name in originals:
            monkeypatch.setattr(torch.Tensor, name, counted(name))
        try:
            return train_epoch(self, *args)
        finally:
            for name, original in originals.items():
                monkeypatch.setattr(torch.Tensor, name, original)
            reads_per_epoch.append(len(reads))

    monkeypatch.setattr(Trainer, "_train_epoch", counting)
    fit(vae, data, TrainConfig(epochs=2, batch_size=32, device="cpu"), progress=False)
    assert len(reads_per_epoch) == 2 and reads_per_epoch[1] == 0  # 43 steps, not one read
