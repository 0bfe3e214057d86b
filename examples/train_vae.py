"""Train a VAE with the Python API and look at what it learned.

MNIST by default (give --data-dir when offline); --dataset digits or fashion-mnist offline:

    python examples/train_vae.py --dataset digits --z-dim 2 --epochs 50 --out runs/example
    python examples/train_vae.py --z-dim 50 --epochs 100 --out runs/mnist      # on a GPU
"""

import pyrovae
from pyrovae.report import plots

from common import example_parser, load

parser = example_parser(__doc__, epochs=50)
parser.add_argument("--z-dim", type=int, default=2)
parser.add_argument("--out", default="runs/example")
args = parser.parse_args()

data = load(args)
vae = pyrovae.build_vae(pyrovae.ModelConfig(image_shape=data.image_shape, z_dim=args.z_dim))
history = pyrovae.fit(vae, data, pyrovae.TrainConfig(epochs=args.epochs, device=args.device), run_dir=args.out)

test_neg_elbo = pyrovae.negative_elbo(vae, data.test.x)
print(f"test negative ELBO: {test_neg_elbo.mean().item():.2f} nats per image")
written = plots.save_run_pictures(vae, data.test, data.image_shape, args.out, metrics=history)
print(f"{', '.join(path.name for path in written)} in {args.out}/")
