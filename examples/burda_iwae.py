"""Reproduce Burda, Grosse & Salakhutdinov (2015), one stochastic layer: VAE and IWAE on MNIST.

Setting of the paper: a 784-200-200-50 MLP with tanh units for encoder and decoder, a
Bernoulli likelihood on dynamically binarized MNIST (a fresh draw of every minibatch),
Adam (beta1 0.9, beta2 0.999, eps 1e-4), batch 20, and the schedule of 8 stages where
stage i runs 3^i epochs at learning rate 0.001 * 10^(-i/7) (3,280 epochs in all). The
test log-likelihood is estimated by importance sampling with K = 5000.

Published test NLL (Table 1, k = 1 for the VAE): VAE 86.76 nats, IWAE with k = 50 84.78 nats.

The full schedule is GPU work (days on a CPU). ``--epoch-scale`` shrinks every stage for a
quick CPU run, e.g. on Fashion-MNIST, which this machine has offline:

    python examples/burda_iwae.py --dataset mnist --data-dir ~/mnist --device cuda             # VAE, full
    python examples/burda_iwae.py --dataset mnist --data-dir ~/mnist --objective iwae --k 50   # IWAE, full
    python examples/burda_iwae.py --dataset fashion-mnist --epoch-scale 0.001 --limit 500      # CPU, minutes
"""

import argparse
import math
import time

import pyro
import torch

import pyrovae
from pyrovae.settings import resolve_device
from pyrovae.training.config import ELBOS
from pyrovae.training.step import SVIStep

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist", "digits"])
parser.add_argument("--data-dir", help="folder with the four IDX files")
parser.add_argument("--objective", default="vae", choices=["vae", "iwae"])
parser.add_argument("--k", type=int, default=1, help="samples per example in training (IWAE's k)")
parser.add_argument("--stages", type=int, default=8)
parser.add_argument("--epoch-scale", type=float, default=1.0, help="multiply every stage's 3^i epochs")
parser.add_argument("--num-samples", type=int, default=5000, help="K of the test log-likelihood")
parser.add_argument("--limit", type=int, help="evaluate the first N test images only")
parser.add_argument("--device", default="auto")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

device = resolve_device(args.device)
data = pyrovae.load_dataset(pyrovae.DataConfig(dataset=args.dataset, data_dir=args.data_dir,
                                               binarize="dynamic")).to(device)
pyro.set_rng_seed(args.seed)
vae = pyrovae.build_vae(pyrovae.ModelConfig(image_shape=data.image_shape, z_dim=50, hidden=(200, 200),
                                            activation="tanh")).to(device)
elbo = ELBOS["iwae" if args.objective == "iwae" else "trace"](
    num_particles=args.k, vectorize_particles=args.k > 1, max_plate_nesting=1)
optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-4)
step = SVIStep(vae, optimizer, elbo)

for stage in range(args.stages):
    lr = 1e-3 * 10 ** (-stage / 7)
    for group in optimizer.param_groups:
        group["lr"] = lr
    epochs = max(1, round(3**stage * args.epoch_scale))
    started = time.perf_counter()
    for _ in range(epochs):
        vae.train()
        loss = sum(step(x, y)[0].loss for x, y in data.batches(20)).item() / len(data.train)
    print(f"stage {stage}: {epochs} epochs at lr {lr:.2e}, last epoch's training bound {loss:.2f} nats "
          f"({time.perf_counter() - started:.0f}s)", flush=True)

x = data.test.x[:args.limit]
neg_elbo = pyrovae.negative_elbo(vae, x)
nll = -pyrovae.log_likelihood(vae, x, num_samples=args.num_samples, progress=True)
print(f"test images: {len(x)}; negative ELBO {neg_elbo.mean():.2f} ± {neg_elbo.std() / math.sqrt(len(x)):.2f}; "
      f"NLL (K={args.num_samples}) {nll.mean():.2f} ± {nll.std() / math.sqrt(len(x)):.2f} nats "
      f"(paper, MNIST: VAE 86.76, IWAE k=50 84.78)")
