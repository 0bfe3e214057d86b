"""The parser of the ``pyrovae`` command: a flag per setting, grouped by topic, and one-line usage errors."""


from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any, NoReturn

from pyrovae import __version__
from pyrovae.data.datasets import DataConfig
from pyrovae.defaults import TABLE_DEFAULTS
from pyrovae.inference.evaluate import EvaluateConfig
from pyrovae.model.config import ModelConfig
from pyrovae.report import plots
from pyrovae.report.latents import TSNE_MAX_POINTS
from pyrovae.runs.rundir import EVAL
from pyrovae.settings import (
    DEVICE_HELP,
    DEVICES,
    ArgumentContainer,
    add_arguments,
    flag,
    guess,
    help_text,
    in_flags,
    marked,
)
from pyrovae.training.config import TrainConfig

RUN_DIR_HELP = "a run directory that `pyrovae train` wrote"
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
"""TrainConfig fields whose flags apply when resuming; other flags must match the run's config.json."""
OBJECTIVE = ("elbo", "particles", "estimator", "kl_weight", "kl_warmup", "kl_balance")  # in a help group of their own


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
                    "end, the pictures of `pyrovae plot`. A .csv or .parquet table trains with its\n"
                    "own defaults where a flag is not given:\n  "
                    + " ".join(f"{flag(name)} {' '.join(map(str, value if isinstance(value, tuple) else [value]))}"
                               for name, value in TABLE_DEFAULTS.items()) + ".", epilog=EPILOG_TRAIN)
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
    add_arguments(train.group("objective"), TrainConfig, skip={f.name for f in fields(TrainConfig)} - set(OBJECTIVE))
    add_arguments(training := train.group("training"), TrainConfig, skip=OBJECTIVE)
    run = train.group("output")
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
                    f"each with\nits standard error, and bits per dimension (not for a table's rows). Conditional\n"
                    f"models score every class (K samples x C classes: C times the work) and also get the\n"
                    f"accuracy of classification by likelihood. A run still training is scored at its last\n"
                    f"complete checkpoint.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    add_arguments(evaluate, EvaluateConfig)
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.add_argument("--out", metavar="FILE", help=f"where to write the results (default: RUN_DIR/{EVAL}), "
                                                        f"e.g. when the run directory is read-only")

    sample = commands.add_parser(
        "sample", help="decode draws from the prior", formatter_class=formatter,
        description="Decode N draws from the prior of a trained run: a .png writes a grid, a .npy or .csv\n"
                    "an (N, D) array of decoded means (with --binary, Bernoulli draws of them). A conditional\n"
                    "model draws from p(z|y) for the class --class Y. A table's run draws rows x ~ p(x|z):\n"
                    "a .csv or .parquet holds them in the table's columns, units and category names, an .npy\n"
                    "encoded (levels as their indices, reals standardized).")
    sample.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    sample.add_argument("--class", dest="label", type=int, metavar="Y",
                        help="generate class Y (conditional models; without it the classes take turns)")
    sample.add_argument("--n", type=int, default=64, help="number of samples (default: %(default)s)")
    sample.add_argument("--out", required=True, metavar="FILE", help="output .png, .npy or .csv (a table: .csv, "
                                                                     ".parquet or .npy)")
    sample.add_argument("--binary", action="store_true",
                        help="write 0/1 Bernoulli draws of the pixels instead of their means (bernoulli likelihood)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default: %(default)s)")

    encode = commands.add_parser(
        "encode", help="write the posterior q(z|x) of every image", formatter_class=formatter,
        description="Encode a split of the run's data: for each example the mean and scale of q(z|x), and its\n"
                    "label if the data have labels. A .npy holds one record per example with the fields\n"
                    "loc, scale and y (np.load(FILE)['loc']); a .npz the same arrays by name.",
        epilog="example:\n  pyrovae encode runs/digits --out latents.npy\n")
    reconstruct = commands.add_parser(
        "reconstruct", help="decode the posterior means of images", formatter_class=formatter,
        description="Reconstruct the first N images of a split as E[x | z = posterior mean]: a .png shows\n"
                    "them above their originals (not for a table's rows), a .npy or .csv writes the (N, D)\n"
                    "array of reconstructions.",
        epilog="example:\n  pyrovae reconstruct runs/digits --n 16 --out reconstructions.png\n")
    for command in (encode, reconstruct):
        command.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
        command.add_argument("--split", choices=("train", "val", "test"), default="test",
                             help="which split of the run's data (default: %(default)s)")
    encode.add_argument("--limit", type=int, metavar="N", help="encode only the first N examples (default: all)")
    encode.add_argument("--out", required=True, metavar="FILE", help="output .npy or .npz")
    reconstruct.add_argument("--n", type=int, metavar="N",
                             help=f"the number of images (default: 8 in a .png, at most {plots.MAX_GRID_IMAGES // 2}; "
                                  f"all in an .npy or .csv)")
    reconstruct.add_argument("--out", required=True, metavar="FILE", help="output .png, .npy or .csv")

    impute = commands.add_parser(
        "impute", help="fill the missing cells of a table", formatter_class=formatter,
        description="Fill the missing cells (empty, NA or NaN) of a .csv or .parquet table with the run's\n"
                    "model: each row's K posterior draws are weighed by self-normalized importance weights\n"
                    "(Mattei & Frellsen 2019), and a cell gets the weighted mean of E[x|z] (a category: its most\n"
                    "probable level). --draws M writes M imputations drawn by those weights instead, numbered\n"
                    "in a first column 'imputation'. The output has the input's columns, order and types; in a\n"
                    ".csv read from a .csv, every observed cell is copied as it was written.",
        epilog="example:\n  pyrovae impute runs/penguins --dataset incomplete.csv --out filled.csv\n")
    impute.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    impute.add_argument("--dataset", required=True, metavar="FILE",
                        help="the .csv or .parquet table to fill, with the columns of the run's table")
    impute.add_argument("--out", required=True, metavar="FILE", help="output .csv or .parquet")
    impute.add_argument("--num-samples", type=int, default=1000, metavar="K",
                        help="posterior draws per row (default: %(default)s)")
    impute.add_argument("--draws", type=int, metavar="M",
                        help="write M multiple imputations (default: one, the weighted mean)")
    impute.add_argument("--seed", type=int, default=0, help="seed of the posterior draws (default: %(default)s)")

    plot = commands.add_parser(
        "plot", help="draw a run's pictures", formatter_class=formatter,
        description="Write a run's pictures into its directory, as `pyrovae train` does at the end:\n"
                    + "".join(f"  {name}.png\n" for name in plots.PICTURES)
                    + "(training_curves needs metrics.jsonl, interpolation labels, class_samples a\n"
                      "conditional model; samples, reconstructions, manifold, interpolation and class_samples\n"
                      "are for images, marginals, correlations and missingness for a table's rows). See\n"
                      "docs/guide.md, 'Reading the pictures'.",
        epilog="examples:\n  pyrovae plot runs/fashion --only latent_scatter manifold --tsne\n"
               "  pyrovae plot runs/digits --only interpolation --interpolate 1 7")
    plot.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    plot.add_argument("--only", nargs="+", choices=plots.PICTURES, metavar="NAME",
                      help="draw only these pictures (default: all that apply)")
    plot.add_argument("--tsne", action="store_true",
                      help=f"latent_scatter by t-SNE instead of PCA when z has more than 2 dimensions "
                           f"(first {TSNE_MAX_POINTS} test examples; slower)")
    plot.add_argument("--quantiles", action="store_true",
                      help="manifold over normal quantiles (0.05 ... 0.95) instead of an even grid over [-2, 2]")
    plot.add_argument("--interpolate", type=int, nargs=2, metavar=("A", "B"),
                      help="interpolation walks from the first test image of class A to one of class B (default: 0 "
                           "and 1 where the test split has them, else its first and last class)")
    plot.add_argument("--color-by", metavar="COLUMN",
                      help="a table's categorical or binary column that colours latent_scatter (default: its first "
                           "categorical column, else its first binary one)")
    plot.add_argument("--seed", type=int, default=0, help="seed of the pictures' random draws (default: %(default)s)")
    plot.add_argument("--device", choices=DEVICES, default="auto", help=f"{DEVICE_HELP} (default: %(default)s)")
    plot.add_argument("--tensorboard", action="store_true",
                      help="also write the run's TensorBoard events into DIR/tensorboard, replacing those there: "
                           "every epoch's metrics, and the pictures, posterior-mean histograms and Embedding "
                           "Projector of the final model (needs `pip install pyrovae[tensorboard]`)")
    plot.add_argument("--out", dest="out_dir", metavar="DIR",
                      help="the folder to write the pictures into (default: RUN_DIR), e.g. when RUN_DIR is read-only "
                           "or still training")
    where = {training: run} | {command: command for command in (evaluate, sample, encode, reconstruct, impute,
                                                                        plot)}
    for threads, quiet in where.items():
        threads.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
        quiet.add_argument("--quiet", action="store_true", help="no progress bar, no output line but the last")
    parser.commands = {"train": train, "evaluate": evaluate, "sample": sample, "encode": encode,
                       "reconstruct": reconstruct, "impute": impute, "plot": plot}
    flags = parser.flags
    for command in parser.commands.values():
        for action in command.options:
            action.help = in_flags(action.help, flags)  # the settings' help texts speak Python
    return parser


INVALID_CHOICE = re.compile(r"invalid choice: (?P<value>.+) \(choose from (?P<choices>.+)\)$")
"""argparse's message about a value that is none of an argument's choices."""


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, guessing a mistyped choice or flag (no prefixes); keeps what argparse keeps to itself:
    its commands' parsers (``commands``), the options added, by :meth:`group` too (``options``), and in the parsed
    namespace the Python names of the options given (``given``: what ``train --resume`` checks against the run)."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.options: list[argparse.Action] = []  # first: argparse's __init__ adds --help
        self.commands: dict[str, Parser] = {}
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        argv = sys.argv[1:] if args is None else list(args)
        parsed, unknown = self.parse_known_args(argv, namespace)
        command = self.commands.get(getattr(parsed, "command", None), self)
        named = {arg.split("=")[0] for arg in argv}
        if unknown:
            flags = [name for action in command.options for name in action.option_strings]
            command.error(f"unrecognized arguments: {' '.join(unknown)}{guess(unknown[0].split('=')[0], flags)}")
        parsed.given = {action.dest for action in command.options if named & set(action.option_strings)}
        return parsed

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


