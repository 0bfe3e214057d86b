"""The importance-sampled test log-likelihood, and how it tightens as K grows.

log p(x) ~ logsumexp_k [log p(x, z_k) - log q(z_k|x)] - log K with z_k ~ q(z|x); K = 1 is
a one-sample ELBO, K = 5000 the number VAE papers report (Burda et al. 2015). Trains a
model first, or reads one trained by `pyrovae train` with --run.

    python examples/log_likelihood.py --dataset digits --epochs 50
    python examples/log_likelihood.py --run runs/mnist --limit 1000
"""

import pyro

import pyrovae
from pyrovae.settings import resolve_device

from common import example_parser, load

parser = example_parser(__doc__, epochs=50)
parser.add_argument("--run", metavar="RUN_DIR", help="a run directory of `pyrovae train` (skips training)")
parser.add_argument("--ks", type=int, nargs="+", default=[1, 10, 100, 1000, 5000], metavar="K")
parser.add_argument("--limit", type=int, default=500, help="test images to evaluate")
args = parser.parse_args()

if args.run:
    run = pyrovae.load_run(args.run, resolve_device(args.device))  # the model and its data, as trained
    vae, data = run.vae, run.data
    pyro.set_rng_seed(args.seed)
else:
    data = load(args)
    vae = pyrovae.build_vae(pyrovae.ModelConfig(image_shape=data.image_shape, z_dim=20))
    pyrovae.fit(vae, data, pyrovae.TrainConfig(epochs=args.epochs, device=args.device, seed=args.seed))

x = data.test.x[:args.limit]
neg_elbo = pyrovae.negative_elbo(vae, x).mean().item()
print(f"{len(x)} test images; negative ELBO {neg_elbo:.2f} nats")
for k in args.ks:
    nll = -pyrovae.log_likelihood(vae, x, num_samples=k, progress=True)
    print(f"K = {k:>5}: NLL {nll.mean():.2f} ± {nll.std() / len(x) ** 0.5:.2f} nats", flush=True)
