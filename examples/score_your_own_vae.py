"""Score your own Pyro VAE: the importance-sampled log-likelihood of a model and guide written in plain Pyro.

The VAE below is the textbook one (Kingma & Welling 2014) in Pyro's idiom: pyro.module,
pyro.plate, dist.Normal, dist.Bernoulli; it trains with pyro.infer.SVI and Trace_ELBO and
knows nothing of pyrovae. pyrovae then estimates its test log-likelihood,

    log p(x) ~ logsumexp_k [log p(x, z_k) - log q(z_k|x)] - log K,   z_k ~ q(z|x)

(Burda, Grosse & Salakhutdinov 2015), for K = 1, 10, 100, 1000: K = 1 is a one-sample
ELBO, and the estimate rises towards log p(x) as K grows.

    python examples/score_your_own_vae.py --dataset fashion-mnist --epochs 5
    python examples/score_your_own_vae.py --dataset digits --epochs 30
"""

import pyro
import pyro.distributions as dist
import torch.nn.functional as F
from torch import nn

import pyrovae

from common import example_parser, load


class VAE(nn.Module):
    """p(z) = N(0, I), p(x|z) = Bernoulli(decoder(z)); q(z|x) = N(loc(x), diag(scale(x)^2))."""

    def __init__(self, x_dim: int, z_dim: int = 20, hidden: int = 400):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, x_dim))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", len(x)):
            loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw_scale) + 1e-3).to_event(1))


parser = example_parser(__doc__, epochs=5, dataset="fashion-mnist")
parser.add_argument("--ks", type=int, nargs="+", default=[1, 10, 100, 1000], metavar="K")
parser.add_argument("--limit", type=int, default=500, help="test images to score")
args = parser.parse_args()

data = load(args)  # dynamically binarized training batches, fixed binary test images
vae = VAE(data.train.x.shape[1]).to(data.train.x.device)
svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
for epoch in range(1, args.epochs + 1):
    loss = sum(svi.step(x) for x, _ in data.batches(128))
    print(f"epoch {epoch}: training -ELBO {loss / len(data.train):.2f} nats per image", flush=True)

x = data.test.x[:args.limit]
print(f"{len(x)} test images:")
for k in args.ks:
    nll = -pyrovae.log_likelihood(vae.model, vae.guide, x, num_samples=k)
    print(f"K = {k:>4}: NLL {nll.mean():.2f} ± {nll.std() / len(x) ** 0.5:.2f} nats", flush=True)
