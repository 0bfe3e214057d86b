"""Test negative ELBO and NLL on Fashion-MNIST for each prior with the Bernoulli likelihood.

Runs the CLI, as a user would, once per prior with the same settings and epochs:

    pyrovae train --dataset fashion-mnist --prior PRIOR [--conditional] --z-dim 20 --epochs E --out DIR/PRIOR
    pyrovae evaluate DIR/PRIOR --num-samples 5000 --limit N

and prints a Markdown table. ``class-means`` is the conditional model (its NLL is the
marginal -log p(x) over the ten classes).

    python benchmarks/priors.py [--epochs 10] [--limit 500] [--out runs/priors]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyrovae.cli import main as pyrovae

PRIORS = {"standard": [], "mixture": ["--prior-components", "10"], "vamp": ["--prior-components", "50"],
          "class-means": ["--conditional"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit", type=int, default=500, help="test images for the K = 5000 NLL")
    parser.add_argument("--out", default="runs/priors")
    args = parser.parse_args()
    rows = []
    for prior, flags in PRIORS.items():
        run = Path(args.out) / prior
        if not (run / "checkpoint.pt").exists():
            assert pyrovae(["train", "--dataset", "fashion-mnist", "--prior", prior, *flags, "--z-dim", "20",
                            "--epochs", str(args.epochs), "--out", str(run), "--no-progress"]) == 0
        assert pyrovae(["evaluate", str(run), "--num-samples", "0"]) == 0
        elbo = json.loads((run / "eval.json").read_text())
        assert pyrovae(["evaluate", str(run), "--num-samples", "5000", "--limit", str(args.limit),
                        "--no-progress"]) == 0
        nll = json.loads((run / "eval.json").read_text())
        seconds = sum(json.loads(line)["epoch_seconds"] for line in (run / "metrics.jsonl").read_text().splitlines())
        rows.append((prior, elbo, nll, seconds))
    print(f"\n| prior | test -ELBO (10,000 images) | NLL, K=5000 ({args.limit} images) | -ELBO, same images "
          f"| train seconds |")
    print("|---|---|---|---|---|")
    for prior, elbo, nll, seconds in rows:
        print(f"| {prior} | {elbo['neg_elbo']:.2f} ± {elbo['neg_elbo_stderr']:.2f} | {nll['nll']:.2f} ± "
              f"{nll['nll_stderr']:.2f} | {nll['neg_elbo']:.2f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
