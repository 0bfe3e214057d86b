"""What writing TensorBoard events costs a training epoch on Fashion-MNIST, with and without, in one process.

The target: at most 3% of the epoch time. Two runs of the same training (784-400-50 MLP,
Bernoulli likelihood, batch 128, dynamically binarized, the same seed) take turns, each going
first in turn, for ``--rounds`` rounds of ``--epochs`` epochs each: one with
``tensorboard=True`` (the default cadence: pictures and histograms at the first and the last
epoch and every 10th), one without. An epoch's time is the wall time from the end of one epoch
to the end of the next (training steps, validation, checkpoint, metrics and, with TensorBoard,
its events); a run's first epoch counts from the start of the epoch loop. Two figures:

- the ratio of the epoch times with and without (sums over all epochs of all rounds), which
  carries the machine's noise;
- the time spent writing the per-epoch events (scalars, pictures, histograms), measured inside
  pyrovae's ``EventLog``, as a share of the epoch time without TensorBoard: the same cost
  without the noise of comparing two runs.

The Embedding Projector is written once, at the end of a run: it is reported on its own, in
seconds and as a share of one run without TensorBoard, and counted in neither per-epoch figure.

    python benchmarks/tensorboard_overhead.py [--epochs 10] [--rounds 3] [--threads N] [--device cpu]

Writes ``benchmarks/results/tensorboard-overhead-<machine>.{json,md}`` and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import machine_name  # noqa: E402
from svi_step import default_vae, fashion_mnist, taking_turns  # noqa: E402

from pyrovae import TrainConfig, fit  # noqa: E402
from pyrovae.report.tensorboard import EventLog, picture_epoch  # noqa: E402
from pyrovae.settings import resolve_device  # noqa: E402
from pyrovae.training.loop import Trainer  # noqa: E402

TARGET = 0.03
"""Most share of an epoch's time that writing the events may take."""


class Clock:
    """The wall times of a kind of run: every epoch, every write of an epoch's events, every projector."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.events: list[float] = []
        self.projector: list[float] = []

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Inside, pyrovae's epoch loop and event log report their times to this clock."""
        originals = Trainer.train_epochs, Trainer._finish_epoch, EventLog.epoch, EventLog.projector
        train_epochs, finish_epoch, events, projector = originals
        last = [0.0]

        def timed_train_epochs(trainer, *args, **kwargs):
            last[0] = time.perf_counter()
            return train_epochs(trainer, *args, **kwargs)

        def timed_finish_epoch(trainer, *args, **kwargs):
            row = finish_epoch(trainer, *args, **kwargs)
            now = time.perf_counter()
            self.epochs.append(now - last[0])
            last[0] = now
            return row

        Trainer.train_epochs, Trainer._finish_epoch = timed_train_epochs, timed_finish_epoch
        EventLog.epoch, EventLog.projector = timed(events, self.events), timed(projector, self.projector)
        try:
            yield
        finally:
            Trainer.train_epochs, Trainer._finish_epoch, EventLog.epoch, EventLog.projector = originals


def timed(method: Callable, seconds: list[float]) -> Callable:
    """``method``, adding the wall time of every call to ``seconds``."""
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        result = method(*args, **kwargs)
        seconds.append(time.perf_counter() - started)
        return result
    return wrapper


def met(value: float, limit: float, shown: str) -> str:
    return f"<= {shown}: {'yes' if value <= limit else 'no'}"


def table(figures: dict) -> str:
    rows = [("epoch, without TensorBoard (s, mean)", f"{figures['epoch_without']:.3f}", ""),
            ("epoch, with TensorBoard (s, mean)", f"{figures['epoch_with']:.3f}", ""),
            ("ratio of the epoch times, with / without", f"{figures['ratio']:.4f}",
             met(figures["ratio"], 1 + TARGET, f"{1 + TARGET:.2f}")),
            ("writing the epoch's events, share of an epoch (measured inside EventLog)",
             f"{figures['events_share']:.4%}", met(figures["events_share"], TARGET, f"{TARGET:.0%}")),
            ("  of it, an epoch with pictures and histograms (s, mean)", f"{figures['events_with_pictures']:.3f}", ""),
            ("  of it, an epoch with scalars only (s, mean)", f"{figures['events_scalars_only']:.4f}", ""),
            ("Embedding Projector, once per run (s, mean)", f"{figures['projector']:.3f}",
             f"{figures['projector_share_of_run']:.2%} of a {figures['epochs']}-epoch run"),
            ]
    return "\n".join(["| figure | value | target |", "|---|---|---|",
                      *(f"| {name} | {value} | {target} |" for name, value, target in rows)]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each kind, taking turns")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = fashion_mnist()
    folder = Path(tempfile.mkdtemp(prefix="tensorboard-overhead-"))
    clocks = {"without": Clock(), "with": Clock()}

    def run(kind: str) -> Callable[[], float]:
        def train() -> float:
            clock = clocks[kind]
            pyro.set_rng_seed(0)
            vae = default_vae(device)
            config = TrainConfig(epochs=args.epochs, device=args.device, tensorboard=kind == "with")
            started = time.perf_counter()
            with clock.recording():
                fit(vae, data, config, run_dir=folder / f"{kind}-{len(clock.epochs)}", progress=False, verbose=False)
            print(f"{kind:>7} TensorBoard: {args.epochs} epochs, {sum(clock.epochs[-args.epochs:]):.1f} s",
                  flush=True)
            return time.perf_counter() - started
        return train

    taking_turns({"without": run("without"), "with": run("with")}, args.rounds)
    without, with_events = clocks["without"], clocks["with"]
    drew = [picture_epoch(i % args.epochs + 1, args.epochs, TrainConfig.tensorboard_every)
            for i in range(len(with_events.events))]  # which epochs wrote pictures and histograms
    pictures = [seconds for seconds, drawn in zip(with_events.events, drew) if drawn]
    scalars_only = [seconds for seconds, drawn in zip(with_events.events, drew) if not drawn]
    epoch_without = sum(without.epochs) / len(without.epochs)
    figures = {
        "machine": machine_name(device.type), "threads": torch.get_num_threads(), "epochs": args.epochs,
        "rounds": args.rounds, "dataset": data.name, "epoch_seconds_without": without.epochs,
        "epoch_seconds_with": with_events.epochs, "events_seconds": with_events.events,
        "projector_seconds": with_events.projector,
        "epoch_without": epoch_without, "epoch_with": sum(with_events.epochs) / len(with_events.epochs),
        "ratio": sum(with_events.epochs) / sum(without.epochs),
        "events_share": sum(with_events.events) / sum(without.epochs),
        "events_with_pictures": sum(pictures) / len(pictures),
        "events_scalars_only": sum(scalars_only) / max(len(scalars_only), 1),
        "projector": sum(with_events.projector) / len(with_events.projector),
        "projector_share_of_run": sum(with_events.projector) / sum(without.epochs),
    }
    results = Path(__file__).parent / "results" / f"tensorboard-overhead-{figures['machine']}"
    results.with_suffix(".json").write_text(json.dumps(figures, indent=2))
    results.with_suffix(".md").write_text(table(figures))
    print(table(figures))


if __name__ == "__main__":
    main()
