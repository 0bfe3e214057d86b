"""What the examples share: their data flags and the dataset they name.

Every example runs on MNIST by default (a GPU makes that quick; give ``--data-dir`` with
the four IDX files when offline) and offline on ``--dataset digits`` (bundled with
scikit-learn) or ``--dataset fashion-mnist`` (found in /usr/share/datasets/fashion-mnist).
"""

import argparse

import pyro

import pyrovae
from pyrovae.settings import resolve_device


def example_parser(doc: str, epochs: int, dataset: str = "mnist") -> argparse.ArgumentParser:
    """A parser with the flags every example takes; ``epochs`` and ``dataset`` are the example's defaults."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=dataset, choices=["mnist", "fashion-mnist", "digits"])
    parser.add_argument("--data-dir", help="folder with the four IDX files of mnist or fashion-mnist")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    return parser


def load(args: argparse.Namespace, binarize: str = "dynamic") -> pyrovae.Dataset:
    """The dataset the flags name, and the seed set for what follows."""
    pyro.set_rng_seed(args.seed)
    config = pyrovae.DataConfig(dataset=args.dataset, data_dir=args.data_dir, binarize=binarize)
    return pyrovae.load_dataset(config).to(resolve_device(args.device))
