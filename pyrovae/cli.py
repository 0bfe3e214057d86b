"""The ``pyrovae`` command: ``train``, ``evaluate``, ``sample`` and ``plot`` subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyro
import torch

from pyrovae import plots
from pyrovae.build import NETS, ModelConfig, build_vae
from pyrovae.data import BINARIZE, DATASETS, DataConfig, load_dataset
from pyrovae.evaluate import mean_and_stderr, negative_elbo
from pyrovae.nets import ACTIVATIONS
from pyrovae.runs import EVAL, RunDir, default_run_dir, load_run
from pyrovae.train import DEVICES, ELBOS, TrainConfig, fit, resolve_device

EPILOG_TRAIN = """examples:
  pyrovae train                                   # 8x8 digits, well under a minute on a CPU
  pyrovae train --dataset fashion-mnist --epochs 20 --out runs/fashion
  pyrovae train --dataset mnist --data-dir ~/mnist --net conv --device cuda
  pyrovae train --out runs/fashion --resume --epochs 40   # continue to 40 epochs in all
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrovae",
        description="Variational autoencoders written as Pyro models and guides, trained by SVI.",
        epilog="Run `pyrovae COMMAND --help` for the options of each command.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a VAE and write a run directory", formatter_class=_Formatter,
        description="Train a VAE by stochastic variational inference. The run directory gets\n"
                    "config.json, checkpoint.pt (after every epoch), metrics.jsonl,\n"
                    "reconstructions.png and samples.png.", epilog=EPILOG_TRAIN)
    data = train.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="digits",
                      help="digits is bundled with scikit-learn (no download); mnist and fashion-mnist "
                           "are read from IDX files or downloaded")
    data.add_argument("--data-dir", metavar="DIR",
                      help="folder holding the four IDX files (train-images-idx3-ubyte, ...; .gz or not)")
    data.add_argument("--binarize", choices=BINARIZE, default="dynamic",
                      help="dynamic: a fresh Bernoulli draw of every training batch; static: one fixed "
                           "draw; none: keep grayscale (the Bernoulli likelihood is then unnormalized)")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="fraction of the training images held out for validation")
    data.add_argument("--no-download", action="store_true", help="never try to download data")
    model = train.add_argument_group("model")
    model.add_argument("--z-dim", type=int, default=10,
                       help="latent size (1 and 2 give pictures of the whole latent space)")
    model.add_argument("--hidden", type=int, nargs="+", default=[400], metavar="N",
                       help="hidden layer sizes of the encoder (the decoder mirrors them)")
    model.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    model.add_argument("--net", choices=NETS, default="mlp",
                       help="mlp, or conv for images with height and width divisible by 4")
    optim = train.add_argument_group("optimization")
    optim.add_argument("--elbo", choices=ELBOS, default="trace",
                       help="trace: Trace_ELBO (Monte Carlo KL); meanfield: TraceMeanField_ELBO (closed-form KL)")
    optim.add_argument("--epochs", type=int, default=100, help="epochs in all (with --resume: the total to reach)")
    optim.add_argument("--batch-size", type=int, default=128)
    optim.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    run = train.add_argument_group("run")
    run.add_argument("--device", choices=DEVICES, default="auto", help="auto picks CUDA when there is a GPU")
    run.add_argument("--seed", type=int, default=0, help="seeds torch, numpy and Pyro")
    run.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    run.add_argument("--out", metavar="DIR", help="run directory (default: runs/<timestamp>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its checkpoint, with its saved settings")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = commands.add_parser(
        "evaluate", help="test negative ELBO of a trained run", formatter_class=_Formatter,
        description=f"Compute the per-example negative ELBO (nats) on a split, print its mean and "
                    f"standard error, and write RUN_DIR/{EVAL}.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--split", choices=("test", "val"), default="test")
    evaluate.add_argument("--batch-size", type=int, default=1000)
    evaluate.add_argument("--device", choices=DEVICES, default="auto")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws")

    sample = commands.add_parser(
        "sample", help="decode draws from the prior", formatter_class=_Formatter,
        description="Decode N draws from the prior of a trained run: a .png writes a grid, "
                    "a .npy an (N, D) array of decoded means.")
    sample.add_argument("run_dir", metavar="RUN_DIR")
    sample.add_argument("--n", type=int, default=64, help="number of samples")
    sample.add_argument("--out", required=True, metavar="FILE", help="output .png or .npy")
    sample.add_argument("--seed", type=int, default=0)

    plot = commands.add_parser(
        "plot", help="draw a run's pictures again", formatter_class=_Formatter,
        description="Write reconstructions.png and samples.png into the run directory.")
    plot.add_argument("run_dir", metavar="RUN_DIR")
    return parser


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the examples' line breaks."""


def _train(args: argparse.Namespace) -> None:
    if args.resume:
        if args.out is None:
            raise ValueError("--resume needs --out DIR, the run directory to continue")
        saved = RunDir(args.out).read_config()
        model_config = ModelConfig(**saved["model"])
        data_config = DataConfig(**saved["data"])
        train_config = TrainConfig(**{**saved["train"], "epochs": args.epochs, "device": args.device})
        out = Path(args.out)
        print(f"resuming {out} with the settings in its config.json (only --epochs and --device apply)")
    else:
        data_config = DataConfig(dataset=args.dataset, data_dir=args.data_dir, binarize=args.binarize,
                                 val_fraction=args.val_fraction, download=not args.no_download)
        train_config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                   elbo=args.elbo, device=args.device, seed=args.seed)
        out = Path(args.out) if args.out else default_run_dir()
    data = load_dataset(data_config)
    if not args.resume:
        model_config = ModelConfig(image_shape=data.image_shape, z_dim=args.z_dim, net=args.net,
                                   hidden=args.hidden, activation=args.activation,
                                   grayscale_targets=args.binarize == "none")
    pyro.set_rng_seed(train_config.seed)
    vae = build_vae(model_config)
    print(f"training on {data.name} ({len(data.train)} train / {len(data.val)} validation images) "
          f"on {resolve_device(train_config.device)}; run directory: {out}")
    fit(vae, data, train_config, run_dir=out, resume=args.resume, progress=not args.no_progress)
    plots.save_run_pictures(vae, data.test.x, model_config.image_shape, out)
    print(f"done: {out}  (next: pyrovae evaluate {out})")


def _evaluate(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    vae, config = load_run(args.run_dir, device)
    data = load_dataset(DataConfig(**config["data"])).to(device)
    split = getattr(data, args.split)
    vae.check_data(split.x, f"{args.split} images")
    pyro.set_rng_seed(args.seed)
    neg_elbo, stderr = mean_and_stderr(negative_elbo(vae, split.x, split.y, batch_size=args.batch_size))
    result = {"neg_elbo": neg_elbo, "neg_elbo_stderr": stderr, "split": args.split, "num_examples": len(split)}
    RunDir(args.run_dir).write_json(EVAL, result)
    print(f"{args.split} negative ELBO: {neg_elbo:.3f} ± {stderr:.3f} nats per example "
          f"({len(split)} images); written to {Path(args.run_dir) / EVAL}")


def _sample(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.suffix not in (".png", ".npy"):
        raise ValueError(f"--out {out} must end in .png (a picture grid) or .npy (an (N, D) array)")
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    vae, config = load_run(args.run_dir)
    image_shape = config["model"]["image_shape"]
    if out.suffix == ".png":
        plots.save(plots.samples_figure(vae, image_shape, n=args.n, seed=args.seed), out)
    else:
        torch.manual_seed(args.seed)
        with torch.no_grad():
            np.save(out, vae.sample(args.n).numpy())
    print(f"wrote {args.n} samples to {out}")


def _plot(args: argparse.Namespace) -> None:
    vae, config = load_run(args.run_dir)
    data = load_dataset(DataConfig(**config["data"]))
    plots.save_run_pictures(vae, data.test.x, config["model"]["image_shape"], args.run_dir)
    print(f"wrote reconstructions.png and samples.png to {args.run_dir}")


COMMANDS = {"train": _train, "evaluate": _evaluate, "sample": _sample, "plot": _plot}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; bad input ends with a one-paragraph message and exit status 2."""
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        print(f"pyrovae {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0
