"""Train a VAE with the Python API and look at what it learned.

Offline on the bundled 8x8 digits by default; ``--dataset mnist`` (or ``fashion-mnist``)
on a GPU for the real thing:

    python examples/train_vae.py --epochs 50 --out runs/example
    python examples/train_vae.py --dataset mnist --z-dim 50 --epochs 100 --out runs/mnist
"""

import argparse

import pyrovae
from pyrovae import plots

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--dataset", default="digits", choices=["digits", "mnist", "fashion-mnist"])
parser.add_argument("--z-dim", type=int, default=2)
parser.add_argument("--epochs", type=int, default=50)
parser.add_argument("--out", default="runs/example")
args = parser.parse_args()

data = pyrovae.load_dataset(pyrovae.DataConfig(dataset=args.dataset, binarize="dynamic"))
vae = pyrovae.build_vae(pyrovae.ModelConfig(image_shape=data.image_shape, z_dim=args.z_dim))
history = pyrovae.fit(vae, data, pyrovae.TrainConfig(epochs=args.epochs), run_dir=args.out)

test_neg_elbo = pyrovae.negative_elbo(vae, data.test.x)
print(f"test negative ELBO: {test_neg_elbo.mean().item():.2f} nats per image")
plots.save_run_pictures(vae, data.test, data.image_shape, args.out)
print(f"reconstructions.png and samples.png in {args.out}/")
