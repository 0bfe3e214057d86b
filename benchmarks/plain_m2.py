"""A plain PyTorch M2 with the same math as pyrovae's few-label default, to check its accuracy side by side.

Kingma, Rezende, Mohamed & Welling (2014), "Semi-supervised learning with deep generative
models", with the class-means prior that ``pyrovae train --conditional --labeled N`` builds:

    y ~ Categorical(1/C),  z | y ~ N(mu_y, I),  x | z ~ Bernoulli(decoder(z)),
    guide q(y|x) q(z|x, y),

an MLP 784-400-10 for q(y|x), 784+C-400-2Z for q(z|x, y), Z-400-784 for the decoder; one
sample of z per image (and per class), Adam at 1e-3, batches of 128 that are half labelled
images (cycled) and half unlabelled ones (``--labeled-fraction``; pyrovae's default for 1,000
labels among 54,000 images), an epoch being one pass over the unlabelled images,
and the classification term weighed by 0.1 N per labelled image. The unlabelled images'
label is summed out by hand, sum_y q(y|x) [ELBO(x, y) + log pi_y - log q(y|x)], where
pyrovae leaves it to ``TraceEnum_ELBO``. The label's columns in q(z|x, y)'s first layer start
N(0, 1), as pyrovae's label table does (``--label-init linear``: as ``nn.Linear`` starts its
weights). No Pyro anywhere: if the two disagree, one of them has a bug.

Trains on the same labelled subset, validation split and test images as pyrovae (its data
loading only), then reports the test accuracy of q(y|x) and of the model's own
classification argmax_y log p(x|y), each log p(x|y) importance-sampled with K = 100 draws
of q(z|x, y). With ``--compare RUN`` the table puts ``RUN/eval.json`` (``pyrovae evaluate
RUN --num-samples 100``) beside it.

    python benchmarks/plain_m2.py [--dataset fashion-mnist] [--labeled 1000] [--labeled-fraction 0.5]
                                  [--epochs 20] [--label-init normal] [--seed 0] [--compare RUN]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.data.datasets import HIDDEN, DataConfig, as_floats, binarize_afresh, load_dataset
from pyrovae.inference.evaluate import accuracy

LOG_2PI = math.log(2 * math.pi)


def log_normal(z: torch.Tensor, loc: torch.Tensor | float, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """log N(z; loc, diag(scale^2)), summed over the last dimension."""
    scale = torch.as_tensor(scale)
    return (-0.5 * ((z - loc) / scale).square() - scale.log() - 0.5 * LOG_2PI).sum(-1)


class PlainM2(nn.Module):
    """The M2 model and guide of the module's docstring as three nets and the class means."""

    def __init__(self, x_dim: int = 784, num_classes: int = 10, hidden: int = 400, z_dim: int = 50,
                 label_init: str = "normal"):
        super().__init__()
        self.num_classes = num_classes
        self.classifier = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self.encoder = nn.Sequential(nn.Linear(x_dim + num_classes, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * z_dim))
        if label_init == "normal":  # the one-hot columns start N(0, 1), as pyrovae's label table (nn.Embedding)
            with torch.no_grad():
                nn.init.normal_(self.encoder[0].weight[:, x_dim:])
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, x_dim))
        self.means = nn.Parameter(3.0 * torch.randn(num_classes, z_dim))

    def log_weights(self, x: torch.Tensor, y: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """log p(x, z_k | y) - log q(z_k|x, y) for z_k ~ q(z|x, y), shape (K, B)."""
        loc, raw = self.encoder(torch.cat([x, F.one_hot(y, self.num_classes).to(x)], -1)).chunk(2, -1)
        scale = F.softplus(raw) + 1e-3
        z = loc + scale * torch.randn(num_samples, *loc.shape)
        logits = self.decoder(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        return log_px + log_normal(z, self.means[y]) - log_normal(z, loc, scale)

    def every_class(self, x: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        """``log_weights`` of x paired with each class, shape (C, K, B)."""
        return torch.stack([self.log_weights(x, torch.full((len(x),), c), num_samples)
                            for c in range(self.num_classes)])

    def loss(self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, n_l: int, n_u: int,
             aux_weight: float) -> torch.Tensor:
        """(N_l / B_l) sum [-ELBO(x, y) - aux_weight log q(y|x)] + (N_u / B_u) sum -ELBO(x)."""
        log_pi = -math.log(self.num_classes)
        labeled = (-(self.log_weights(x_l, y_l)[0] + log_pi)
                   + aux_weight * F.cross_entropy(self.classifier(x_l), y_l, reduction="none"))
        q_y = self.classifier(x_u).log_softmax(-1).T  # (C, B)
        elbo_given_y = self.every_class(x_u)[:, 0]  # (C, B)
        unlabeled = -(q_y.exp() * (elbo_given_y + log_pi - q_y)).sum(0)
        return n_l / len(x_l) * labeled.sum() + n_u / len(x_u) * unlabeled.sum()

    @torch.no_grad()
    def classify(self, x: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """argmax_y log p(x|y) (importance-sampled; pi uniform) and argmax_y q(y|x)."""
        log_px_given_y = self.every_class(x, num_samples).logsumexp(1)
        return log_px_given_y.argmax(0), self.classifier(x).argmax(-1)


def train(model: PlainM2, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, epochs: int,
          labeled_fraction: float = 0.5, batch_size: int = 128) -> float:
    """Adam on batches of which ``labeled_fraction`` are labelled images; returns the seconds per epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    per_l = round(labeled_fraction * batch_size)
    per_u = batch_size - per_l
    aux_weight = 0.1 * (len(x_l) + len(x_u))
    steps = math.ceil(len(x_u) / per_u)
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        unlabeled = torch.randperm(len(x_u))
        labeled = torch.cat([torch.randperm(len(x_l)) for _ in range(math.ceil(steps * per_l / len(x_l)))])
        total = 0.0
        for step in range(steps):
            u, l_ = unlabeled[step * per_u:(step + 1) * per_u], labeled[step * per_l:(step + 1) * per_l]
            loss = model.loss(binarize_afresh(x_l[l_]), y_l[l_], binarize_afresh(x_u[u]), len(x_l), len(x_u),
                              aux_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        print(f"epoch {epoch}: loss per image {total / steps / (len(x_l) + len(x_u)):.2f}", flush=True)
    return (time.perf_counter() - started) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("fashion-mnist", "mnist"), default="fashion-mnist")
    parser.add_argument("--labeled", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--labeled-fraction", type=float, default=0.5,
                        help="labelled share of a batch (pyrovae's default is 0.5 for 1,000 labels, 0.1 for 100)")
    parser.add_argument("--label-init", choices=("normal", "linear"), default="normal",
                        help="the start of q(z|x, y)'s one-hot columns: normal N(0, 1), as pyrovae's; linear as "
                             "nn.Linear starts its weights, about 30 times smaller")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", type=Path, help="a pyrovae run of the same settings, already evaluated")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    data = load_dataset(DataConfig(dataset=args.dataset, labeled=args.labeled))
    x, y = as_floats(data.train.x).flatten(1), data.train.y
    kept = y != HIDDEN
    model = PlainM2(x.shape[1], data.num_classes, label_init=args.label_init)
    epoch_seconds = train(model, x[kept], y[kept], x[~kept], args.epochs, args.labeled_fraction)
    test_x, test_y = as_floats(data.test.x).flatten(1), data.test.y
    predicted = [model.classify(test_x[i:i + 500], num_samples=100) for i in range(0, len(test_x), 500)]
    model_says, guide_says = (torch.cat(part) for part in zip(*predicted))
    rows = [{"implementation": f"plain PyTorch M2, {args.label_init} label init", "seed": args.seed,
             "accuracy": accuracy(model_says, test_y), "accuracy_guide": accuracy(guide_says, test_y),
             "epoch_seconds": epoch_seconds}]
    if args.compare:
        run = json.loads((args.compare / "eval.json").read_text())
        seed = json.loads((args.compare / "config.json").read_text())["train"]["seed"]
        rows.append({"implementation": f"pyrovae ({args.compare.name})", "seed": seed, "accuracy": run["accuracy"],
                     "accuracy_guide": run["accuracy_guide"]})
    table = [f"{args.dataset}, {args.labeled} labels, {args.epochs} epochs, {len(test_x)} test images, K = 100", "",
             "| implementation | seed | accuracy (model) | accuracy (q(y\\|x)) |", "|---|---|---|---|"]
    table += [f"| {row['implementation']} | {row['seed']} | {row['accuracy']:.1%} | {row['accuracy_guide']:.1%} |"
              for row in rows]
    name = f"plain-m2-{args.dataset}-labeled-{args.labeled}-seed-{args.seed}-{args.label_init}-init"
    results = Path(__file__).parent / "results" / name
    results.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    results.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
