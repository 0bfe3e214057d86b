"""Few labels on Fashion-MNIST (or MNIST): test accuracy and NLL of the semi-supervised and unsupervised models.

Runs the CLI, as a user would, once per label count with the default settings (784-400-50,
dynamic binarization, the classifier guide, its q(y|x) convolutional below 50 labels per class):

    pyrovae train --dataset DATASET --conditional --labeled N --z-dim 50 --epochs E --out DIR/labeled-N
    pyrovae evaluate DIR/labeled-N --num-samples 100

and compares each with a baseline that sees the same labels: a logistic regression trained on
the N labelled images only (grayscale pixels), or, with no labels, k-means on the pixels
(cluster accuracy, clusters matched to classes). Targets on Fashion-MNIST:

    100 labels: accuracy >= 76%;  1,000 labels: >= 83%;  0 labels: cluster accuracy >= 58%.

Writes ``benchmarks/results/semi-supervised-<dataset>-<machine>.{json,md}`` and prints the table.
A run directory that holds a finished run is evaluated again, not retrained; label counts not
run keep the rows they had in the results files.

    python benchmarks/semi_supervised.py [--dataset fashion-mnist|mnist] [--epochs 50] [--labels 100 1000 0]
                                         [--device auto] [--limit N] [--out runs/semi-supervised]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from run import machine_name  # noqa: I001 (benchmarks/run.py, beside this script)
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression

from pyrovae.cli import main as pyrovae
from pyrovae.data.datasets import HIDDEN, DataConfig, as_floats, load_dataset
from pyrovae.inference.evaluate import accuracy
from pyrovae.settings import resolve_device

TARGETS = {"fashion-mnist": {100: 0.76, 1000: 0.83, 0: 0.58}}
"""The accuracy each label count should reach on a dataset (cluster accuracy for 0 labels)."""


def baseline(dataset: str, labeled: int, limit: int | None) -> tuple[str, float]:
    """The baseline's name and test accuracy: logistic regression on the labelled images, or k-means without."""
    data = load_dataset(DataConfig(dataset=dataset, labeled=labeled, binarize="none"))
    train_x, test_x = as_floats(data.train.x).numpy(), as_floats(data.test.x[:limit]).numpy()
    test_y = data.test.y[:limit]
    if labeled:
        kept = (data.train.y != HIDDEN).numpy()
        model = LogisticRegression(max_iter=5000).fit(train_x[kept], data.train.y[kept].numpy())
        return "logistic regression on the labelled images", model.score(test_x, test_y.numpy())
    kmeans = KMeans(n_clusters=data.num_classes, n_init=10, random_state=0).fit(train_x)
    predicted = torch.as_tensor(kmeans.predict(test_x), dtype=torch.long)
    return "k-means on pixels (cluster accuracy)", accuracy(predicted, test_y, clusters=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("fashion-mnist", "mnist"), default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--labels", type=int, nargs="+", default=[0, 1000, 100], metavar="N")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--limit", type=int, help="evaluate only the first N test images (quicker)")
    parser.add_argument("--out", default="runs/semi-supervised")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    for labeled in args.labels:
        run = Path(args.out) / f"{args.dataset}-labeled-{labeled}"
        started = time.perf_counter()
        if not (run / "checkpoint.pt").exists():
            assert pyrovae(["train", "--dataset", args.dataset, "--conditional", "--labeled", str(labeled),
                            "--z-dim", "50", "--epochs", str(args.epochs), "--device", args.device,
                            "--out", str(run), "--no-progress"]) == 0
        train_seconds = time.perf_counter() - started
        limit = [] if args.limit is None else ["--limit", str(args.limit)]
        assert pyrovae(["evaluate", str(run), "--num-samples", "100", "--device", args.device, *limit,
                        "--no-progress"]) == 0
        result = json.loads((run / "eval.json").read_text())
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        name, reference = baseline(args.dataset, labeled, args.limit)
        rows.append({"labeled": labeled, "accuracy": result["accuracy"],
                     "accuracy_guide": result.get("accuracy_guide"), "nll": result["nll"],
                     "nll_stderr": result["nll_stderr"], "test_images": result["num_examples"],
                     "baseline": name, "baseline_accuracy": reference,
                     "target": TARGETS.get(args.dataset, {}).get(labeled), "epochs": len(metrics),
                     "epoch_seconds": sum(row["epoch_seconds"] for row in metrics) / len(metrics),
                     "train_wall_seconds": train_seconds})
    results = Path(__file__).parent / "results" / f"semi-supervised-{args.dataset}-{machine_name(device.type)}"
    if results.with_suffix(".json").exists():  # the label counts not run this time keep their earlier rows
        earlier = json.loads(results.with_suffix(".json").read_text())
        rows += [row for row in earlier if row["labeled"] not in args.labels]
    table = ["| labels | accuracy (model) | accuracy (q(y\\|x)) | NLL, K=100 | baseline | target | epochs | "
             "s / epoch | training, wall |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        guide = "" if row["accuracy_guide"] is None else f"{row['accuracy_guide']:.1%}"
        target = "" if row["target"] is None else f">= {row['target']:.0%}"
        table.append(f"| {row['labeled']} | {row['accuracy']:.1%} | {guide} | {row['nll']:.2f} ± "
                     f"{row['nll_stderr']:.2f} | {row['baseline_accuracy']:.1%} ({row['baseline']}) | {target} | "
                     f"{row['epochs']} | {row['epoch_seconds']:.1f} | {row['train_wall_seconds'] / 60:.1f} min |")
    results.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    results.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
