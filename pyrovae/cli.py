"""The ``pyrovae`` command: ``train``, ``evaluate``, ``sample`` and ``plot`` subcommands."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pyro
import torch

from pyrovae import __version__
from pyrovae.data.datasets import DataConfig, Dataset, Split, as_floats, load_dataset
from pyrovae.data.label_mix import visible_labels
from pyrovae.defaults import binarization, configure
from pyrovae.distributed import from_main, join
from pyrovae.files import NoSpaceError, cannot_write, write_atomically
from pyrovae.inference.evaluate import EvaluateConfig, class_log_prior, evaluation_report
from pyrovae.memory import OutOfMemory
from pyrovae.model.build import build_vae
from pyrovae.model.config import LABEL_PRIORS, ModelConfig
from pyrovae.model.vae import VAE
from pyrovae.report import plots
from pyrovae.report.tensorboard import check_installed, write_run_events
from pyrovae.runs.load import load_data, load_run
from pyrovae.runs.rundir import CHECKPOINT, EVAL, RunDir, default_run_dir
from pyrovae.runs.writer import RunWriter
from pyrovae.settings import (
    DEVICE_HELP,
    DEVICES,
    ArgumentContainer,
    add_arguments,
    check_positive,
    flag,
    from_args,
    guess,
    help_text,
    in_flags,
    marked,
    resolve_device,
)
from pyrovae.training.callbacks import Callback
from pyrovae.training.config import TrainConfig
from pyrovae.training.loop import fit
from pyrovae.training.preflight import check_model_fits
from pyrovae.training.stopping import TrainingInterrupted

RUN_DIR_HELP = "a run directory that `pyrovae train` wrote"
SAMPLE_CHUNK = 10_000
"""Samples decoded at once by ``pyrovae sample --out FILE.npy``."""
EPILOG_TRAIN = """examples:
  pyrovae train                                   # 8x8 digits, well under a minute on a CPU
  pyrovae train --dataset fashion-mnist --epochs 20 --out runs/fashion
  pyrovae train --dataset mnist --data-dir ~/mnist --net conv --device cuda
  pyrovae train --out runs/fashion --resume --epochs 40   # continue to 40 epochs in all
  pyrovae train --conditional --out runs/cvae             # p(z|y) = N(mu_y, I); then sample --class 3
  pyrovae train --conditional --labeled 100 --dataset fashion-mnist   # 10 labels per class, the rest hidden
  pyrovae train --conditional --labeled 0 --out runs/clusters          # clustering: no label at all
  pyrovae train --prior vamp --prior-components 50 --kl-warmup 10
  pyrovae train --dataset fashion-mnist --likelihood continuous-bernoulli   # grayscale pixels
  pyrovae train --likelihood gaussian --likelihood-scale 0.2 --learn-scale decoder
  torchrun --nproc-per-node 2 -m pyrovae train --dataset fashion-mnist --batch-size 1024   # data-parallel
"""


FROM_DATA = marked(ModelConfig, "from_data")
"""ModelConfig fields that ``pyrovae train`` takes from the data (and the likelihood), not from a flag."""
RESUMABLE = marked(TrainConfig, "resumable")
"""TrainConfig fields whose flags apply when resuming; the rest come from the run's config.json."""


def build_parser() -> Parser:
    parser = Parser(
        prog="pyrovae",
        description="Variational autoencoders written as Pyro models and guides, trained by SVI.",
        epilog="Run `pyrovae COMMAND --help` for the options of each command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = argparse.RawDescriptionHelpFormatter  # keeps the descriptions' and examples' line breaks

    train = commands.add_parser(
        "train", help="train a VAE and write a run directory", formatter_class=formatter,
        description="Train a VAE by stochastic variational inference. The run directory gets\n"
                    "config.json, checkpoint.pt (after every epoch), metrics.jsonl and, at the\n"
                    "end, the pictures of `pyrovae plot`.", epilog=EPILOG_TRAIN)
    # A flag per settings field (pyrovae.settings); written here only what is not one field's plain flag.
    data = train.group("data")
    add_arguments(data, DataConfig, skip=("download",))
    data.add_argument("--no-download", dest="download", action="store_false",  # download=False
                      help="never download; read the files from data_dir=DIR or the cache only")
    model = train.group("model")
    add_arguments(model, ModelConfig,
                  prior={"default": None,  # default: class-means with --conditional
                         "help": help_text(ModelConfig, "prior") + " (default: class-means with --conditional, "
                                                                   "else standard)"},
                  learn_scale={"nargs": "?", "const": "pixel",  # --learn-scale alone: one scale per pixel
                               "help": help_text(ModelConfig, "learn_scale") + " (the bare flag: pixel)"})
    model.add_argument("--conditional", action="store_true",  # sets num_classes from the data, and the prior
                       help="train with the labels y: p(z|y) = N(mu_y, I) unless --prior names another "
                            "(then --decoder-conditioning must carry the labels)")
    add_arguments(train.group("training"), TrainConfig)
    run = train.group("run")
    run.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    run.add_argument("--out", dest="run_dir", metavar="DIR", help="run directory (default: runs/<timestamp>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its checkpoint, with its saved settings "
                          "(after Ctrl-C or a crash: mid-epoch, exactly where it stopped)")
    run.add_argument("--overwrite", action="store_true",
                     help="start again in an --out folder that holds a run (deletes that run's files)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = commands.add_parser(
        "evaluate", help="test negative ELBO and importance-sampled log-likelihood", formatter_class=formatter,
        description=f"Compute per-example numbers in nats on a split and write RUN_DIR/{EVAL}: the negative\n"
                    f"ELBO and the importance-sampled negative log-likelihood\n"
                    f"  -log p(x) ~ -(logsumexp_k [log p(x, z_k) - log q(z_k|x)] - log K),  z_k ~ q(z|x)\n"
                    f"(Burda et al. 2015, the number VAE papers report, with K = {EvaluateConfig.num_samples}), "
                    f"each with\nits standard error, and bits per dimension. Conditional models also get the\n"
                    f"accuracy of classification by likelihood. A run still training is scored at its last\n"
                    f"complete checkpoint.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    add_arguments(evaluate, EvaluateConfig)
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.add_argument("--out", metavar="FILE", help=f"where to write the results (default: RUN_DIR/{EVAL}), "
                                                        f"e.g. when the run directory is read-only")

    sample = commands.add_parser(
        "sample", help="decode draws from the prior", formatter_class=formatter,
        description="Decode N draws from the prior of a trained run: a .png writes a grid, "
                    "a .npy an (N, D) array of decoded means. A conditional model draws from\n"
                    "p(z|y) for the class --class Y.")
    sample.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    sample.add_argument("--class", dest="label", type=int, metavar="Y",
                        help="generate class Y (conditional models; without it the classes take turns)")
    sample.add_argument("--n", type=int, default=64, help="number of samples (default: %(default)s)")
    sample.add_argument("--out", required=True, metavar="FILE", help="output .png or .npy")
    sample.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default: %(default)s)")

    plot = commands.add_parser(
        "plot", help="draw a run's pictures", formatter_class=formatter,
        description="Write a run's pictures into its directory, as `pyrovae train` does at the end:\n"
                    + "".join(f"  {name}.png\n" for name in plots.PICTURES)
                    + "(training_curves needs metrics.jsonl, interpolation labels, class_samples a\n"
                      "conditional model). See docs/guide.md, 'Reading the pictures'.",
        epilog="examples:\n  pyrovae plot runs/fashion --only latent_scatter manifold --tsne\n"
               "  pyrovae plot runs/digits --only interpolation --interpolate 1 7")
    plot.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    plot.add_argument("--only", nargs="+", choices=plots.PICTURES, metavar="NAME",
                      help="draw only these pictures (default: all that apply)")
    plot.add_argument("--tsne", action="store_true",
                      help=f"latent_scatter by t-SNE instead of PCA when z has more than 2 dimensions "
                           f"(first {plots.TSNE_MAX_POINTS} test images; slower)")
    plot.add_argument("--quantiles", action="store_true",
                      help="manifold over normal quantiles (0.05 ... 0.95) instead of an even grid over [-2, 2]")
    plot.add_argument("--interpolate", type=int, nargs=2, metavar=("A", "B"),
                      help="interpolation walks from the first test image of class A to one of class B (default: 3 "
                           "and 8 where the test split has them, else its first and last class)")
    plot.add_argument("--seed", type=int, default=0, help="seed of the pictures' random draws (default: %(default)s)")
    plot.add_argument("--device", choices=DEVICES, default="auto", help=f"{DEVICE_HELP} (default: %(default)s)")
    plot.add_argument("--tensorboard", action="store_true",
                      help="also write the run's TensorBoard events into DIR/tensorboard, replacing those there: "
                           "every epoch's metrics, and the pictures, posterior-mean histograms and Embedding "
                           "Projector of the final model (needs `pip install pyrovae[tensorboard]`)")
    plot.add_argument("--out", dest="out_dir", metavar="DIR",
                      help="the folder to write the pictures into (default: RUN_DIR), e.g. when RUN_DIR is read-only "
                           "or still training")
    parser.commands = {"train": train, "evaluate": evaluate, "sample": sample, "plot": plot}
    flags = parser.flags
    for command in parser.commands.values():
        for action in command.options:
            action.help = in_flags(action.help, flags)  # the settings' help texts speak Python
    return parser


INVALID_CHOICE = re.compile(r"invalid choice: (?P<value>.+) \(choose from (?P<choices>.+)\)$")
"""argparse's message about a value that is none of an argument's choices."""


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, with a guess for a mistyped choice; keeps what argparse keeps to itself: its
    subcommands' parsers (``commands``) and the options added to it, in its :meth:`group` too (``options``)."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.options: list[argparse.Action] = []  # first: argparse's __init__ adds --help
        self.commands: dict[str, Parser] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *names: str, **options: Any) -> argparse.Action:
        action = super().add_argument(*names, **options)
        self.options.append(action)
        return action

    def group(self, title: str) -> _Group:
        """A new argument group titled ``title`` in the help, whose options this parser keeps too."""
        return _Group(self.add_argument_group(title), self.options)

    @property
    def flags(self) -> dict[str, argparse.Action]:
        """The options of every subcommand by the Python name they set: ``run_dir`` is ``--out``."""
        return {action.dest: action for command in self.commands.values() for action in command.options
                if action.option_strings}

    def error(self, message: str) -> NoReturn:
        choice = INVALID_CHOICE.search(message)
        if choice:  # the choices as the help lists them, unquoted, and the closest one
            names = [name.strip("'") for name in choice["choices"].split(", ")]
            message = (f"{message[:choice.start()]}invalid choice: {choice['value']} (choose from "
                       f"{', '.join(names)}){guess(choice['value'].strip(chr(39)), names)}")
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Group:
    """An argument group that lists the options added to it in its parser's ``options``."""

    def __init__(self, group: ArgumentContainer, options: list[argparse.Action]):
        self.group, self.options = group, options

    def add_argument(self, *names: str, **options: Any) -> argparse.Action:
        action = self.group.add_argument(*names, **options)
        self.options.append(action)
        return action


class RunPictures(Callback):
    """Draws the run's pictures into its directory when training ends (``pyrovae plot`` redraws them)."""

    files = tuple(f"{name}.png" for name in plots.PICTURES)

    def __init__(self, vae: VAE, data: Dataset, run: RunDir, image_shape: Sequence[int]):
        self.vae, self.data, self.run, self.image_shape = vae, data, run, image_shape

    def training_done(self, trained: list[dict[str, float]]) -> None:
        plots.save_run_pictures(self.vae, self.data.test, self.image_shape, self.run.path,
                                metrics=self.run.read_metrics())


def _train(args: argparse.Namespace) -> None:
    if args.resume and args.run_dir is None:
        raise ValueError("resume=True needs run_dir=DIR, the run directory to continue")
    processes, _ = join(resolve_device(args.device))
    out = Path(from_main(args.run_dir or default_run_dir(), processes))
    run = RunDir(out)
    if processes.is_main:  # refused before any data are read; fit checks again, under the run's lock
        RunWriter(run).check(args.resume, args.overwrite)
    if args.resume:  # the saved settings, and the data they were trained on (refused if they changed)
        model_config = run.settings(ModelConfig, "model")
        train_config = dataclasses.replace(run.settings(TrainConfig, "train"),
                                           **{name: getattr(args, name) for name in RESUMABLE})
        data = load_data(run)
    else:
        train_config = from_args(TrainConfig, args)
        data = load_dataset(_data_config(args), resolve_device(train_config.device))
        model_config = _model_config(args, data)
    device = resolve_device(train_config.device)
    check_model_fits(model_config, device)  # by formula, before the model is built
    pyro.set_rng_seed(train_config.seed)
    vae = build_vae(model_config)
    if args.resume:
        print(f"resuming {out} with the settings in its config.json "
              f"(only {', '.join(map(flag, RESUMABLE))} apply)")
    parallel = f" in {processes.world_size} processes" if processes.parallel else ""
    print(f"training on {data.name} ({len(data.train)} train / {len(data.val)} validation images) "
          f"on {device}{parallel}; training images {data.train.storage()}; run directory: {out}")
    pictures = [RunPictures(vae, data, run, model_config.image_shape)] if processes.is_main else []
    try:
        fit(vae, data, train_config, run_dir=out, resume=args.resume, overwrite=args.overwrite,
            progress=not args.no_progress, callbacks=pictures)
    except NoSpaceError as full:
        then = (f"continue exactly with `pyrovae train --out {out} --resume`" if run.file(CHECKPOINT).exists()
                else "train again")
        raise NoSpaceError(f"{full}; free some space, then {then}") from None
    print(f"done: {out}  (next: pyrovae evaluate {out})")


def _data_config(args: argparse.Namespace) -> DataConfig:
    """The data the train flags describe; ``--binarize`` defaults to what ``--likelihood`` can score."""
    if args.labeled is not None and not (args.conditional or args.decoder_conditioning or args.prior in LABEL_PRIORS):
        raise ValueError(f"--labeled {args.labeled} hides labels from a model that reads them; add --conditional "
                         f"(a model without labels needs no --labeled)")
    return from_args(DataConfig, args, binarize=args.binarize or binarization(args.likelihood))


def _model_config(args: argparse.Namespace, data: Dataset) -> ModelConfig:
    """The model the train flags describe for ``data``: ``--conditional`` defaults the prior to class-means, and
    :func:`~pyrovae.defaults.configure` sets what follows from the other settings, as in Python."""
    prior = args.prior or ("class-means" if args.conditional else "standard")
    conditional = args.conditional or args.decoder_conditioning or prior in LABEL_PRIORS
    if conditional and prior not in LABEL_PRIORS and not args.decoder_conditioning:
        raise ValueError(f"--conditional with --prior {prior} would ignore the labels (that prior does not "
                         f"read them); add --decoder-conditioning, or use --prior class-means")
    model = from_args(ModelConfig, args, prior=prior, image_shape=data.image_shape,
                      num_classes=data.num_classes if conditional else None)
    return configure(model, data.config)[0]


def _evaluate(args: argparse.Namespace) -> None:
    settings = from_args(EvaluateConfig, args)
    processes, device = join(resolve_device(settings.device))
    vae = load_run(args.run_dir, device, data=False).vae
    data = load_data(RunDir(args.run_dir))
    out = Path(args.out or Path(args.run_dir) / EVAL)
    if why := cannot_write(out.parent):
        raise ValueError(f"cannot write {out} ({why}); write it elsewhere with --out FILE")
    split = getattr(data, settings.split)
    if settings.limit is not None:
        split = Split(split.x[:settings.limit], split.y[:settings.limit])
    pyro.set_rng_seed(settings.seed)
    log_py = class_log_prior(visible_labels(data.train), vae.num_classes) if vae.conditional else None
    num_samples = None if settings.elbo_only else settings.num_samples
    report = evaluation_report(vae, as_floats(split.x), split.y, num_samples, log_py, settings.batch_size,
                               settings.memory_budget * 2**30, progress=not args.no_progress and processes.is_main,
                               seed=settings.seed, processes=processes, clusters=data.config.labeled == 0)
    result = {"split": settings.split, **report}
    if processes.is_main:  # no lock: a run still training is read and left alone, but for this file
        write_atomically(out, json.dumps(result, indent=2).encode())
    print(f"{settings.split} split, {len(split)} images, nats per example (± standard error):")
    if "neg_elbo" in report:
        print(f"  negative ELBO          {report['neg_elbo']:10.3f} ± {report['neg_elbo_stderr']:.3f}")
    if "nll" in report:
        print(f"  NLL, K={settings.num_samples:<6}         {report['nll']:10.3f} ± {report['nll_stderr']:.3f}   "
              f"({report['bits_per_dim']:.4f} bits/dim)")
    if "nll_given_label" in report:
        print(f"  NLL given the label    {report['nll_given_label']:10.3f} ± {report['nll_given_label_stderr']:.3f}")
    matched = ", clusters matched to classes" if data.config.labeled == 0 else ""
    if "accuracy" in report:
        print(f"  accuracy, argmax_y log p(x|y) + log p(y){matched}: {report['accuracy']:.4f}")
    if "accuracy_guide" in report:
        print(f"  accuracy of the guide's classifier, argmax_y q(y|x){matched}: {report['accuracy_guide']:.4f}")
    print(f"written to {out}")


def _sample(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.suffix not in (".png", ".npy"):
        raise ValueError(f"--out {out} must end in .png (a picture grid) or .npy (an (N, D) array)")
    check_positive(args, "n")
    if out.suffix == ".png" and args.n > plots.MAX_GRID_IMAGES:
        raise ValueError(f"--n {args.n} is too many images for one readable .png grid (at most "
                         f"{plots.MAX_GRID_IMAGES}); write them to an .npy file instead, any number fits")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    run = load_run(args.run_dir, data=False)
    vae, image_shape = run.vae, run.config["model"]["image_shape"]
    if args.label is not None and not vae.conditional:
        raise ValueError(f"--class needs a conditional model, and {args.run_dir} was trained without labels; "
                         f"train one with `pyrovae train --conditional`")
    if args.label is not None:
        vae.check_labels(torch.tensor([args.label]), "--class")
    if out.suffix == ".png":
        plots.save(plots.samples_figure(vae, image_shape, n=args.n, seed=args.seed, label=args.label), out)
    else:
        torch.manual_seed(args.seed)
        _save_samples(vae, args.n, out, args.label, SAMPLE_CHUNK)
    of_class = f" of class {args.label}" if args.label is not None else ""
    print(f"wrote {args.n} samples{of_class} to {out}")


@torch.no_grad()
def _save_samples(vae: VAE, n: int, path: Path, label: int | None, chunk: int) -> None:
    """Write ``n`` decoded prior draws to the ``.npy`` file ``path``, ``chunk`` at a time (any ``n`` fits in memory)."""
    labels = plots.sample_labels(vae, n, label)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, vae.x_dim))
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        array[start:start + count] = vae.sample(count, None if labels is None else labels[start:start + count]).numpy()
    array.flush()


def _plot(args: argparse.Namespace) -> None:
    if args.tensorboard:
        check_installed()
    loaded = load_run(args.run_dir, resolve_device(args.device))
    vae, data, image_shape = loaded.vae, loaded.data, loaded.config["model"]["image_shape"]
    run = RunDir(args.run_dir)
    options = plots.PictureOptions(tsne=args.tsne, quantiles=args.quantiles, seed=args.seed,
                                   interpolate=args.interpolate and tuple(args.interpolate))
    folder = Path(args.out_dir or args.run_dir)
    if why := cannot_write(folder):
        raise ValueError(f"cannot write pictures into {folder} ({why}); draw them elsewhere with --out DIR")
    into_run = folder.resolve() == run.path.resolve()
    with RunWriter(run, setting="out_dir").writing() if into_run else contextlib.nullcontext():
        written = plots.save_run_pictures(vae, data.test, image_shape, folder, metrics=loaded.metrics,
                                          only=args.only, options=options)
        print(f"wrote {', '.join(path.name for path in written)} to {folder}")
        if args.tensorboard:
            events = write_run_events(folder, vae, data.val, loaded.metrics, image_shape)
            print(f"wrote TensorBoard events to {events}; view them with `tensorboard --logdir {events}`")


COMMANDS = {"train": _train, "evaluate": _evaluate, "sample": _sample, "plot": _plot}
INTERRUPTED = 130
"""Exit status after Ctrl-C, as shells report a process ended by SIGINT (128 + 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; bad input ends with a one-line message (naming flags) and exit status 2, Ctrl-C with 130."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 alone reports
        sys.stdout = open(os.devnull, "w")  # for the life of the process
    notes = _NotesInFlags(args.command, parser.flags)
    logging.getLogger("pyrovae").addHandler(notes)
    try:
        if getattr(args, "threads", None) is not None:
            check_positive(args, "threads")
            torch.set_num_threads(args.threads)
        COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FloatingPointError, NoSpaceError, OutOfMemory) as error:
        message = in_flags(str(error), parser.flags, getattr(error, "settings", ()))
        print(f"pyrovae {args.command}: error: {message}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stopped:
        print(f"pyrovae {args.command}: {in_flags(str(stopped), parser.flags)}", file=sys.stderr)
        return INTERRUPTED
    finally:
        logging.getLogger("pyrovae").removeHandler(notes)
    return 0


class _NotesInFlags(logging.StreamHandler):
    """The library's notes (warnings logged under ``pyrovae``) on stderr, one line each, naming flags."""

    def __init__(self, command: str, flags: dict[str, argparse.Action]):
        super().__init__(sys.stderr)
        self.command, self.flags = command, flags
        self.setLevel(logging.WARNING)

    def format(self, record: logging.LogRecord) -> str:
        return f"pyrovae {self.command}: note: {in_flags(record.getMessage(), self.flags)}"
