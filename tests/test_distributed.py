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

from pyrovae import DataConfig, ModelConfig, TrainConfig, build_vae, fit, load_dataset, shared_gradients
from pyrovae.distributed import SINGLE, Processes, shard
from pyrovae.train import Trainer

needs_shared_memory = pytest.mark.skipif(not os.path.isdir(shared_gradients.SHARED_FOLDER),
                                         reason="no /dev/shm on this machine")

WORKER = """
import sys
import pyro, torch
from pyrovae import ModelConfig, TrainConfig, build_vae, fit, from_arrays

# No reparameterization noise: z = loc. Each rank would otherwise draw its own noise, and the
# comparison is about the data split, the loss scale and the gradient all-reduce.
from pyrovae.distributions import ReparameterizedNormal
ReparameterizedNormal.rsample = lambda self, sample_shape=(): self.loc.expand(self._extended_shape(sample_shape))
# argv[4]: how the gradients are averaged; report which way was taken.
import pyrovae.distributed, pyrovae.shared_gradients
if sys.argv[4] == "gloo":
    pyrovae.shared_gradients.SHARED_FOLDER = "/no/such/folder"
make_rows = pyrovae.distributed.shared_rows
def reporting_rows(*args):
    rows = make_rows(*args)
    print("exchange:", "gloo" if rows is None else "shared-memory")
    return rows
pyrovae.distributed.shared_rows = reporting_rows
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


@pytest.mark.parametrize("prior,kl_balance,exchange", [
    pytest.param("standard", 0, "shared-memory", marks=needs_shared_memory),
    ("standard", 0, "gloo"),
    pytest.param("class-means", 1e-3, "shared-memory", marks=needs_shared_memory)])
def test_two_gloo_processes_match_one_process_on_the_concatenated_batches(tmp_path, prior, kl_balance, exchange):
    args = [sys.executable, "-c", WORKER]
    single = subprocess.run([*args, str(tmp_path / "single.pt"), prior, str(kl_balance), exchange],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    port = str(free_port())
    workers = [subprocess.Popen([*args, str(tmp_path / "ddp.pt"), prior, str(kl_balance), exchange],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
                                     "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": port})
               for rank in range(2)]
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr
        assert f"exchange: {exchange}" in stdout
    one, two = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5, rtol=0), name
    pyro.set_rng_seed(0)
    initial = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,), prior=prior, num_classes=3))
    assert not all(torch.allclose(one[n], value) for n, value in initial.state_dict().items())  # it trained


AVERAGING_WORKER = """
import json, sys
import torch, torch.distributed as dist
import pyrovae.shared_gradients
from pyrovae.distributed import Processes, data_parallel
if sys.argv[1] == "gloo":
    pyrovae.shared_gradients.SHARED_FOLDER = "/no/such/folder"
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 512), torch.nn.Linear(512, 512), torch.nn.Linear(512, 1))
ddp = data_parallel(model, Processes(rank, 2, rank))
grads = []
for step in range(3):  # 2 buckets (the first holds 1 MB); the shared rows alternate halves by step
    model.zero_grad()
    ddp(torch.full((4, 3), float((rank + 1) * (step + 1)))).square().sum().backward()
    grads.append([p.grad.tolist() for p in model.parameters()])
print(json.dumps(grads))
dist.destroy_process_group()
"""


@pytest.mark.parametrize("exchange", [pytest.param("shared-memory", marks=needs_shared_memory), "gloo"])
def test_gradients_are_the_mean_over_the_ranks(exchange):
    port = str(free_port())
    workers = [subprocess.Popen([sys.executable, "-c", AVERAGING_WORKER, exchange], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "localhost",
                                     "MASTER_PORT": port})
               for rank in range(2)]
    results = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr
        results.append(json.loads(stdout))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 512), torch.nn.Linear(512, 512), torch.nn.Linear(512, 1))
    for step in range(3):
        expected = []
        for rank in range(2):  # each rank's own gradient, then their mean
            model.zero_grad()
            model(torch.full((4, 3), float((rank + 1) * (step + 1)))).square().sum().backward()
            expected.append([p.grad.clone() for p in model.parameters()])
        for got in (results[0][step], results[1][step]):
            for value, (a, b) in zip(got, zip(*expected)):
                torch.testing.assert_close(torch.tensor(value), (a + b) / 2)


def test_shards_are_disjoint_equal_and_cover_the_order():
    order = torch.randperm(11)
    shards = [shard(order, Processes(rank, 3)) for rank in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded with the order's head to 12
    assert set(torch.cat(shards).tolist()) == set(order.tolist())
    assert torch.equal(shard(order, SINGLE), order)


def torchrun(*args, cwd):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "pyrovae", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


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
    assert len(torch.load(out / "checkpoint.pt", weights_only=True)["rng"]["ranks"]) == 2

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


@pytest.fixture
def lone_gloo_group():
    """A process group of this process alone, for the collective calls of one rank."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://localhost:{free_port()}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


@needs_shared_memory
def test_shared_rows_leave_no_file_and_give_way_to_gloo_without_room(lone_gloo_group, monkeypatch):
    folder_before = set(os.listdir(shared_gradients.SHARED_FOLDER))
    rows = shared_gradients.shared_rows([torch.zeros(3, 2), torch.zeros(5)], rank=0, world_size=1)
    assert rows.rows.shape == (2, 1, 11)  # two halves, one row per rank, every parameter entry
    assert shared_gradients.shared_rows([torch.zeros(3), torch.zeros(3, dtype=torch.float64)], 0, 1) is None

    def no_room(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    assert shared_gradients.shared_rows([torch.zeros(3)], rank=0, world_size=1) is None
    assert set(os.listdir(shared_gradients.SHARED_FOLDER)) == folder_before
