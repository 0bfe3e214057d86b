"""The reliability probe: damaged, crafted and absurd input against every command, each outcome counted.

Every trial runs one ``pyrovae`` command (or ``load_run``) in this process, under a time limit, on a
copy of a small trained run, and is judged:

- ``ok``: exit 0 (a damaged checkpoint that loads must hold the original weights);
- ``refused``: exit 2 with a one-line error (notes may come before it), and no file that was there
  before is changed;
- the failures: ``traceback`` (an exception escaped), ``hang`` (the time limit struck), ``long error``
  (a refusal of more than one line), ``undetected`` (a damaged checkpoint loaded with other weights)
  and ``destroyed`` (a file there before the command changed, or a temporary file left behind).

The target is no failure at all. Unix only (the time limit is SIGALRM). About a minute on 2 cores.

    python benchmarks/probe.py [--seed 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pyrovae.cli import main
from pyrovae.runs.checkpoint import CheckpointError
from pyrovae.runs.load import load_run

TINY = ["--hidden", "16", "--z-dim", "2", "--epochs", "1", "--no-progress", "--device", "cpu", "--threads", "1"]
TIME_LIMIT = 60  # seconds a trial may take
FAILURES = ("traceback", "hang", "long error", "undetected", "destroyed")
BAD_NUMBERS = ("nan", "inf", "-inf", "-1", "0", "1e30", "2.5", "abc", "", "1e-300")


class Hang(BaseException):
    """The trial ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def strike(*_):
        raise Hang

    previous = signal.signal(signal.SIGALRM, strike)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` and its bytes (what a refusal must leave as it was)."""
    return {str(path): path.read_bytes() for path in folder.rglob("*") if path.is_file() and not path.is_symlink()
            and path.stat().st_size < 50_000_000}


def judge_cli(argv: list[str], folder: Path) -> str:
    """Run ``pyrovae argv`` and judge it; ``folder``'s files must survive a refusal."""
    before = snapshot(folder)
    error = io.StringIO()
    try:
        with time_limit(TIME_LIMIT), contextlib.redirect_stderr(error), contextlib.redirect_stdout(io.StringIO()):
            status = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    except Hang:
        return "hang"
    except Exception:  # noqa: BLE001 -- what the probe counts
        return "traceback"
    if status == 0:
        return "ok"
    lines = [line for line in error.getvalue().splitlines() if line and ": note: " not in line]
    if len(lines) != 1:
        return "long error"
    after = snapshot(folder)
    changed = [name for name, data in before.items() if after.get(name, data) != data]
    left = [name for name in after if name.endswith(".tmp")]
    return "destroyed" if changed or left else "refused"


def judge_load(run: Path, weights: dict[str, torch.Tensor]) -> str:
    """``load_run(run)``: refused as CheckpointError, or loaded with exactly ``weights``."""
    try:
        with time_limit(TIME_LIMIT):
            loaded = load_run(run, data=False)
    except Hang:
        return "hang"
    except (CheckpointError, ValueError) as error:
        return "long error" if "\n" in str(error) else "refused"
    except Exception:  # noqa: BLE001
        return "traceback"
    state = loaded.vae.state_dict()
    same = state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)
    return "ok" if same else "undetected"


class Probe:
    """The trials, on copies of one trained run in a scratch folder."""

    def __init__(self, root: Path, seed: int):
        self.root, self.random = root, random.Random(seed)
        self.base = root / "base"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["train", *TINY, "--out", str(self.base)]) == 0
        self.weights = load_run(self.base, data=False).vae.state_dict()
        self.outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.count = 0

    def copy(self) -> Path:
        self.count += 1
        run = self.root / f"run{self.count}"
        shutil.copytree(self.base, run)
        return run

    def record(self, kind: str, outcome: str, what: str) -> None:
        self.outcomes[kind][outcome] += 1
        if outcome in FAILURES:
            print(f"  {outcome:<10} {kind}: {what}", flush=True)

    def commands(self, run: Path) -> list[list[str]]:
        """A read of the run by each command that reads one."""
        out = self.root / f"out{self.count}"
        out.mkdir(exist_ok=True)
        return [["evaluate", str(run), "--elbo-only", "--limit", "20", "--no-progress", "--out", str(out / "e.json")],
                ["sample", str(run), "--n", "4", "--out", str(out / "s.npy")],
                ["plot", str(run), "--only", "samples", "training_curves", "--out", str(out)],
                ["encode", str(run), "--limit", "5", "--out", str(out / "z.npy")],
                ["reconstruct", str(run), "--n", "4", "--out", str(out / "r.npy")],
                ["train", *TINY, "--out", str(run), "--resume", "--epochs", "2"]]

    def damaged_checkpoints(self, flips: int, cuts: int) -> None:
        """Single flipped bits anywhere in checkpoint.pt, and cuts at random lengths."""
        for trial in range(flips + cuts):
            run = self.copy()
            path = run / "checkpoint.pt"
            data = bytearray(path.read_bytes())
            if trial < flips:
                at = self.random.randrange(len(data))
                data[at] ^= 1 << self.random.randrange(8)
                what = f"bit flipped at byte {at} of {len(data)}"
            else:
                data = data[:self.random.randrange(len(data))]
                what = f"cut to {len(data)} bytes"
            path.write_bytes(bytes(data))
            self.record("checkpoint damaged", judge_load(run, self.weights), what)
            if trial % 10 == 0:  # and now and then through a command
                argv = self.random.choice(self.commands(run))
                self.record("checkpoint damaged", judge_cli(argv, run), f"{what}: {argv[0]}")

    def crafted_checkpoints(self) -> None:
        """Entries of checkpoint.pt replaced by values of the wrong shape or type (saved as 0.3.0 saved them)."""
        state = torch.load(self.base / "checkpoint.pt", weights_only=True)
        state = state if "model" in state else torch.load(io.BytesIO(state["payload"].numpy().tobytes()),
                                                           weights_only=True)
        name = next(iter(state["model"]))
        crafted = {
            "rng": [{}, {"torch": "x"}, {"torch": torch.zeros(3, dtype=torch.uint8)}, {**state["rng"], "numpy": [1]},
                    {**state["rng"], "ranks": [1, 2]}, []],
            "partial": [{"foo": 1}, {"step": 10**12}, {"step": -1}, "x", {}],
            "metrics": [[1, 2, 3], [{"epoch": "a"}], "x", [None], [{}]],
            "epoch": [-1, 10**9, "3", 2.5, None],
            "skipped": [-5, "x"],
            "kl_weight": [torch.tensor(float("nan")), "x", torch.zeros(3)],
            "model": [{}, {**state["model"], name: torch.zeros(1)}, {**state["model"], "extra": torch.zeros(1)},
                      {**state["model"], name: state["model"][name] * float("nan")}, [1]],
            "optimizer": [{}, {"state": 1}, {"state": {}, "param_groups": "x"}],
        }
        for entry, values in crafted.items():
            for value in values:
                for argv in self.commands(run := self.copy()):
                    torch.save({**state, entry: value}, run / "checkpoint.pt")
                    self.record("checkpoint crafted", judge_cli(argv, run), f"{entry}={str(value)[:40]}: {argv[0]}")

    def crafted_configs(self) -> None:
        """Settings of config.json deleted or replaced, JSON nested deep, sections of the wrong type."""
        config = json.loads((self.base / "config.json").read_text())
        variants = [("deep nesting", "[" * 100_000 + "]" * 100_000), ("not JSON", "{"), ("a list", "[]"),
                    ("source tampered", json.dumps({**config, "source": "tampered"}))]
        for section in ("model", "data", "train"):
            for key in sorted(config[section]):
                value = self.random.choice([None, "x", -1, 1e30, [], {}, [10**7, 10**7], 2.5, True])
                changed = {**config, section: {**config[section], key: value}}
                variants.append((f"{section}.{key}={value!r}", json.dumps(changed)))
                kept = {name: value for name, value in config[section].items() if name != key}
                variants.append((f"no {section}.{key}", json.dumps({**config, section: kept})))
        for what, text in variants:
            run = self.copy()
            (run / "config.json").write_text(text)
            argv = self.random.choice(self.commands(run))
            self.record("config crafted", judge_cli(argv, run), f"{what}: {argv[0]}")

    def damaged_metrics(self) -> None:
        """Lines of metrics.jsonl that are no metrics row."""
        for line in (b"42", b'{"epoch": 4}', b"\xff\xfe garbage", b'{"epoch": 1, "loss', b"[]", b"null", b"1e999"):
            for argv in self.commands(run := self.copy()):
                with (run / "metrics.jsonl").open("ab") as file:
                    file.write(line + b"\n")
                self.record("metrics damaged", judge_cli(argv, run), f"{line[:20]!r}: {argv[0]}")

    def bad_data(self) -> None:
        """Data files that are not what their names say, or hold values no model can take."""
        folder = self.root / "data"
        folder.mkdir()
        good = np.random.default_rng(0).random((60, 16), dtype=np.float32)
        arrays = {"nan": np.full((60, 16), np.nan, np.float32), "inf": np.full((60, 16), np.inf, np.float32),
                  "huge": np.full((60, 16), 3e38, np.float32), "complex": good.astype(np.complex64),
                  "object": np.array([object()] * 60), "empty": np.zeros((60, 0), np.float32),
                  "no rows": np.zeros((0, 16), np.float32), "3d": good.reshape(60, 4, 4)}
        files = {}
        for what, array in arrays.items():
            np.save(path := folder / f"{what.replace(' ', '_')}.npy", array, allow_pickle=True)
            files[what] = path
        for what, data in {"random bytes": os.urandom(500), "text": b"not numpy\n", "zero bytes": b"",
                           "cut": (folder / "nan.npy").read_bytes()[:100]}.items():
            (path := folder / f"{what.replace(' ', '_')}.npy").write_bytes(data)
            files[what] = path
        (path := folder / "notzip.npz").write_bytes(b"PK not a zip")
        files["npz not a zip"] = path
        for what, content in {"npz empty x_test": {"x_train": good, "x_test": good[:0]},
                              "npz float labels": {"x": good, "y": np.linspace(0, 0.999, 60)},
                              "npz label 1e9": {"x": good, "y": np.full(60, 10**9)},
                              "npz uint64 labels": {"x": good, "y": np.full(60, 2**63 + 5, np.uint64)},
                              "npz negative labels": {"x": good, "y": -np.ones(60, int)}}.items():
            np.savez(path := folder / f"{what.replace(' ', '_')}.npz", **content)
            files[what] = path
        for what, path in files.items():
            for extra in ([], ["--likelihood", "gaussian"], ["--conditional"]):
                argv = ["train", *TINY, "--dataset", str(path), *extra, "--out", str(self.root / f"d{self.count}")]
                self.count += 1
                self.record("data bad", judge_cli(argv, folder), f"{what} {' '.join(extra)}")
        np.save(folder / "good.npy", good)
        argv = ["train", *TINY, "--dataset", str(folder / "good.npy"), "--image-size", "100000", "--out",
                str(self.root / "big")]
        self.record("data bad", judge_cli(argv, folder), "--image-size 100000")
        self.image_folders()

    def image_folders(self) -> None:
        """Folders of images holding a FIFO, a link to /dev/zero, and files that are no PNG."""
        for what in ("fifo", "dev zero", "zero bytes", "text", "cut", "huge"):
            folder = self.root / f"images-{what.replace(' ', '-')}"
            for label in ("a", "b"):
                (folder / label).mkdir(parents=True)
                for index in range(4):
                    Image.new("L", (8, 8), 40 * index).save(folder / label / f"{index}.png")
            bad = folder / "a" / "zz.png"
            if what == "fifo":
                os.mkfifo(bad)
            elif what == "dev zero":
                bad.symlink_to("/dev/zero")
            elif what == "huge":
                Image.new("L", (20000, 20000)).save(bad)
            else:
                good = (folder / "a" / "0.png").read_bytes()
                bad.write_bytes({"zero bytes": b"", "text": b"hello", "cut": good[:len(good) // 2]}[what])
            for extra in ([], ["--image-size", "8"]):
                argv = ["train", *TINY, "--dataset", str(folder), *extra, "--out", str(self.root / f"i{self.count}")]
                self.count += 1
                self.record("images bad", judge_cli(argv, folder), f"{what} {' '.join(extra)}")

    def bad_flags(self) -> None:
        """Every number flag of every command given each of :data:`BAD_NUMBERS`."""
        from pyrovae.cli import build_parser

        parser = build_parser()
        for command, sub in parser.commands.items():
            for action in sub.options:
                if action.type not in (int, float) or not action.option_strings:
                    continue
                for value in BAD_NUMBERS:
                    run = self.copy()
                    argv = {"train": ["train", *TINY, "--out", str(self.root / f"f{self.count}")],
                            **{argv[0]: argv for argv in self.commands(run)[:-1]}}.get(command)
                    if argv is None:
                        continue
                    argv = [*argv, action.option_strings[-1], value]
                    self.record(f"flags of {command}", judge_cli(argv, run), f"{action.option_strings[-1]} {value!r}")

    def outputs(self) -> None:
        """Outputs over files that are there: too big to fit, a folder in the way, a full disk (a 1 MB tmpfs)."""
        run = self.copy()
        keep = self.root / "keep.npy"
        np.save(keep, np.ones(8, np.float32))
        argv = ["sample", str(run), "--n", "1000000000000", "--out", str(keep)]
        self.record("outputs", judge_cli(argv, self.root), "sample --n 1e12 over a file")
        reads = self.commands(run)[:-1]
        for argv in reads:
            into_folder = [str(self.root) if part.startswith(str(self.root / "out")) else part for part in argv]
            self.record("outputs", judge_cli(into_folder, self.root), f"--out a folder: {argv[0]}")
        small = self.root / "small"
        small.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                          capture_output=True).returncode:
            print("  full-disk trials skipped: mounting a small tmpfs needs root")
            return
        try:
            np.save(small / "keep.npy", np.ones(8, np.float32))
            free = shutil.disk_usage(small).free
            (small / "ballast").write_bytes(bytes(free - 4096))
            for argv in [*reads, ["sample", str(run), "--n", "100000", "--out", str(small / "s.npy")],
                         ["train", *TINY, "--out", str(small / "run")]]:
                argv = [str(small / Path(part).name) if part.startswith(str(self.root / "out")) else part
                        for part in argv]
                self.record("outputs", judge_cli(argv, small), f"full disk: {argv[0]}")
        finally:
            subprocess.run(["umount", str(small)], check=True)


def main_probe() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed of the damage and the values chosen")
    parser.add_argument("--json", type=Path, help="also write the counts to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        probe = Probe(Path(scratch), args.seed)
        trials: list[Callable[[], None]] = [lambda: probe.damaged_checkpoints(100, 30), probe.crafted_checkpoints,
                                            probe.crafted_configs, probe.damaged_metrics, probe.bad_data,
                                            probe.bad_flags, probe.outputs]
        for trial in trials:
            trial()
    total = sum(sum(counts.values()) for counts in probe.outcomes.values())
    failed = sum(counts[name] for counts in probe.outcomes.values() for name in FAILURES)
    for kind, counts in probe.outcomes.items():
        print(f"{kind:<22}" + ", ".join(f"{name} {count}" for name, count in sorted(counts.items())))
    print(f"{total} trials, {failed} failures")
    if args.json:
        args.json.write_text(json.dumps({"trials": total, "failures": failed, "outcomes": probe.outcomes}, indent=2))


if __name__ == "__main__":
    main_probe()
