"""The likelihood ladder: how much flow posteriors, IWAE, DReG and a second stochastic layer lower the test NLL.

Six rows on dynamically binarized Fashion-MNIST (or MNIST), 784-400-50 MLPs (ReLU), Adam, the same
epochs for every row; test NLL by importance sampling with K = 5000 and its standard error:

    1. diagonal guide, ELBO                      4. IAF guide (2 transforms), ELBO
    2. diagonal guide, IWAE k=5 (standard)       5. two stochastic layers (100, 50), IWAE k=5 DReG
    3. diagonal guide, IWAE k=5 DReG             6. all three: two layers, IAF, IWAE k=5 DReG

Target: the best row beats row 1 by at least 4 nats. For scale, on MNIST Burda et al.'s
1-layer VAE -> 2-layer IWAE gap is 3.9 nats (86.76 -> 82.90) after 3,280 epochs.

``--schedule burda`` trains every row with Burda, Grosse & Salakhutdinov (2015)'s full MNIST
schedule instead: 8 stages, stage i running 3^i epochs at learning rate 0.001 * 10^(-i/7)
(3,280 epochs), batch 20, Adam's eps 1e-4; GPU work (days on a CPU). Published test NLL on
MNIST (Table 1), the numbers to beat:

    VAE, 1 stochastic layer (k=1)       86.76     IWAE, 1 layer, k=50       84.78
    VAE, 2 stochastic layers (k=1)      85.33     IWAE, 2 layers, k=50      82.90

    python benchmarks/likelihood_ladder.py --epochs 2 --limit 200                   # CPU, ~30 minutes
    python benchmarks/likelihood_ladder.py --dataset mnist --data-dir ~/mnist --schedule burda --device cuda

Writes ``benchmarks/results/likelihood-ladder-<dataset>-<machine>.{json,md}`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pyro
import torch
from run import machine_name  # noqa: I001 (benchmarks/run.py, beside this script)

import pyrovae
from pyrovae.settings import resolve_device
from pyrovae.training.config import ELBOS
from pyrovae.training.step import SVIStep

ROWS = {
    "diagonal + ELBO": dict(model={}, elbo="trace", particles=1, estimator="standard"),
    "diagonal + IWAE k=5": dict(model={}, elbo="iwae", particles=5, estimator="standard"),
    "diagonal + IWAE k=5 DReG": dict(model={}, elbo="iwae", particles=5, estimator="dreg"),
    "IAF + ELBO": dict(model={"guide": "iaf"}, elbo="trace", particles=1, estimator="standard"),
    "two layers + IWAE k=5 DReG": dict(model={"latent_layers": 2}, elbo="iwae", particles=5, estimator="dreg"),
    "two layers + IAF + IWAE k=5 DReG": dict(model={"latent_layers": 2, "guide": "iaf"}, elbo="iwae", particles=5,
                                             estimator="dreg"),
}
"""Each row: the model settings beside 784-400-50, the objective, K and the gradient estimator."""
PARTS = [("IWAE k=5", 2, 1), ("DReG", 3, 2), ("IAF", 4, 1), ("second layer (with IWAE DReG)", 5, 3),
         ("IAF on top of the rest", 6, 5), ("all three", 6, 1)]
"""What each part adds: (part, row with it, row without it), rows numbered from 1."""
TARGET_GAIN = 4.0


def stages(schedule: str, epochs: int) -> tuple[int, list[tuple[int, float]]]:
    """The batch size and the (epochs, learning rate) of each stage."""
    if schedule == "burda":
        return 20, [(3**i, 1e-3 * 10 ** (-i / 7)) for i in range(8)]
    return 128, [(epochs, 1e-3)]


def train_and_score(name: str, row: dict, data: pyrovae.Dataset, args: argparse.Namespace,
                    device: torch.device) -> dict:
    """Train one row from seed 0 and score it on the test images: -ELBO and NLL (K = args.num_samples)."""
    pyro.set_rng_seed(0)
    config = pyrovae.ModelConfig(image_shape=data.image_shape, z_dim=50, hidden=(400,), **row["model"])
    vae = pyrovae.build_vae(config).to(device)
    options = {"estimator": row["estimator"]} if row["elbo"] == "iwae" else {}
    elbo = ELBOS[row["elbo"]](num_particles=row["particles"], vectorize_particles=row["particles"] > 1,
                              max_plate_nesting=1, **options)
    batch_size, schedule = stages(args.schedule, args.epochs)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, eps=1e-4 if args.schedule == "burda" else 1e-8)
    step = SVIStep(vae, optimizer, elbo, data_size=len(data.train))
    started = time.perf_counter()
    for epochs, lr in schedule:
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(epochs):
            vae.train()
            for x, y in data.batches(batch_size):
                step(x, y)
    train_seconds = time.perf_counter() - started
    x = data.test.x[:args.limit]
    started = time.perf_counter()
    pyro.set_rng_seed(1)
    nll = -pyrovae.log_likelihood(vae, x, num_samples=args.num_samples)
    neg_elbo = pyrovae.negative_elbo(vae, x)
    result = {"row": name, **row, "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - started,
              "nll": nll.mean().item(), "nll_stderr": (nll.std() / math.sqrt(len(x))).item(),
              "neg_elbo": neg_elbo.mean().item(), "neg_elbo_stderr": (neg_elbo.std() / math.sqrt(len(x))).item()}
    print(f"{name:34s} NLL {result['nll']:7.2f} ± {result['nll_stderr']:.2f}  -ELBO {result['neg_elbo']:7.2f}  "
          f"({train_seconds:.0f}s training, {result['eval_seconds']:.0f}s evaluating)", flush=True)
    return result


def table(results: list[dict], args: argparse.Namespace) -> str:
    """The ladder and what each part adds, as Markdown."""
    lines = ["| # | row | test NLL (K = %d) | test -ELBO | training | evaluation |" % args.num_samples,
             "|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        lines.append(f"| {i} | {r['row']} | {r['nll']:.2f} ± {r['nll_stderr']:.2f} | {r['neg_elbo']:.2f} ± "
                     f"{r['neg_elbo_stderr']:.2f} | {r['train_seconds']:.0f} s | {r['eval_seconds']:.0f} s |")
    if len(results) == len(ROWS):
        lines += ["", "| part | rows | NLL gain (nats) |", "|---|---|---|"]
        for part, with_it, without in PARTS:
            a, b = results[with_it - 1], results[without - 1]
            gain = b["nll"] - a["nll"]
            stderr = math.hypot(a["nll_stderr"], b["nll_stderr"])  # an upper bound: the same images in both
            lines.append(f"| {part} | {without} -> {with_it} | {gain:+.2f} (± {stderr:.2f}) |")
        best = min(results, key=lambda r: r["nll"])
        gain = results[0]["nll"] - best["nll"]
        lines += ["", f"Best row: {best['row']}, {gain:.2f} nats below row 1 (target: at least {TARGET_GAIN:g}): "
                      f"{'met' if gain >= TARGET_GAIN else 'not met'}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("fashion-mnist", "mnist"), default="fashion-mnist")
    parser.add_argument("--data-dir", help="folder with the four IDX files")
    parser.add_argument("--schedule", choices=("flat", "burda"), default="flat",
                        help="flat: --epochs at lr 0.001, batch 128; burda: Burda et al.'s 3,280 epochs")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every row with --schedule flat")
    parser.add_argument("--num-samples", type=int, default=5000, help="K of the test log-likelihood")
    parser.add_argument("--limit", type=int, help="evaluate the first N test images only (quicker)")
    parser.add_argument("--rows", type=int, nargs="+", default=list(range(1, len(ROWS) + 1)), metavar="I")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 100 test images, K = 100: a smoke test")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.limit, args.num_samples = 1, 100, 100
    device = resolve_device(args.device)
    data = pyrovae.load_dataset(pyrovae.DataConfig(dataset=args.dataset, data_dir=args.data_dir,
                                                   binarize="dynamic")).to(device)
    names = list(ROWS)
    results = [train_and_score(names[i - 1], ROWS[names[i - 1]], data, args, device) for i in args.rows]
    markdown = table(results, args)
    print(markdown)
    settings = {"dataset": args.dataset, "schedule": args.schedule, "epochs": args.epochs, "num_samples":
                args.num_samples, "test_images": len(data.test.x[:args.limit]), "device": str(device)}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"likelihood-ladder-{args.dataset}-{machine_name(device)}"
    stem.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": results}, indent=2))
    stem.with_suffix(".md").write_text(f"Settings: {json.dumps(settings)}\n\n{markdown}\n")


if __name__ == "__main__":
    main()
