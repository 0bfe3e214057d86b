"""Tables (issue 34): imputation, mixed types, synthetic rows and the cost of mixed sites, side by side.

Four parts (``--parts``), each on the same rows and masks for every method:

- **imputation**: scikit-learn's breast cancer table (30 real columns, standardized), ``--missing`` 50% of
  the cells removed completely at random for each of ``--seeds`` mask seeds; the RMSE on the removed cells of
  ``pyrovae train --dataset FILE.csv --epochs E [--train-flags]`` then ``pyrovae impute``, against
  scikit-learn's SimpleImputer (mean), KNNImputer and IterativeImputer. Target: pyrovae <= 0.95x Iterative.
- **mixed**: Palmer penguins without ``year`` (a survey year, not a trait), 20% more cells removed; the
  accuracy of the imputed categories and the RMSE (standardized) of the imputed numbers, against
  IterativeImputer on one-hot categories (argmax back) and against mode/mean. Target: ahead of both on both.
- **synthetic**: the complete penguin rows, half to train on and half held out; pyrovae and SDV's TVAE
  (``ctgan``, run by ``--tvae-python``) trained with the same epochs, then as many synthetic rows as held-out
  ones; a classifier two-sample test: the 5-fold ROC AUC of HistGradientBoostingClassifier telling held-out
  rows from synthetic ones (0.5: indistinguishable). Also pyrovae trained on the training half with 20% of its
  cells removed (TVAE cannot). Target: pyrovae's AUC <= TVAE's.
- **speed**: one epoch (batch 512) over 100,000 generated rows of 20 mixed columns (8 real, 4 count,
  4 binary, 4 categorical) against the same network on 20 real columns, taking turns ``--rounds`` times;
  the median ratio. Target: <= 2.

    python benchmarks/tables.py [--parts imputation mixed synthetic speed] [--seeds 5] [--epochs 500]
                                [--train-flags "--z-dim 20"] [--tvae-python /tmp/ctgan-venv/bin/python] [--quick]

Writes ``benchmarks/results/tables-<part>-<machine>.json`` (with ``--tag``: ``tables-<part>-<tag>-<machine>``)
and prints a table per part.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
from sklearn.model_selection import StratifiedKFold, cross_val_score

sys.path.insert(0, str(Path(__file__).parent))
from run import machine_name  # noqa: E402

from pyrovae import ModelConfig, TrainConfig, build_vae, fit, from_table  # noqa: E402
from pyrovae.cli import main as pyrovae  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TVAE = """
import sys, pandas as pd, torch
from ctgan import TVAE
train, out, epochs, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(seed)
torch.set_num_threads(2)
frame = pd.read_csv(train)
model = TVAE(epochs=epochs)
model.fit(frame, discrete_columns=[c for c in frame if not pd.api.types.is_numeric_dtype(frame[c])])
model.sample(n).to_csv(out, index=False)
"""


def remove(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """``frame`` with a ``fraction`` of its observed cells removed completely at random, and the removed cells;
    a row that would lose every cell keeps them all (pyrovae refuses an empty row)."""
    removed = (np.random.default_rng(seed).random(frame.shape) < fraction) & frame.notna().to_numpy()
    removed[frame.mask(removed).isna().all(axis=1).to_numpy()] = False
    return frame.mask(removed), removed


def pyrovae_run(frame: pd.DataFrame, work: Path, name: str, args: argparse.Namespace, seed: int) -> Path:
    """``pyrovae train`` on ``frame`` written as a CSV; the run directory."""
    frame.to_csv(work / f"{name}.csv", index=False)
    run = work / name
    assert pyrovae(["train", "--dataset", str(work / f"{name}.csv"), "--epochs", str(args.epochs), "--seed", str(seed),
                    "--out", str(run), "--overwrite", "--quiet", "--threads", str(args.threads),
                    *shlex.split(args.train_flags)]) == 0
    return run


def pyrovae_impute(frame: pd.DataFrame, work: Path, name: str, args: argparse.Namespace, seed: int) -> pd.DataFrame:
    """``frame``'s missing cells filled by ``pyrovae train`` then ``pyrovae impute``, all through the CLI."""
    run = pyrovae_run(frame, work, name, args, seed)
    assert pyrovae(["impute", str(run), "--dataset", str(work / f"{name}.csv"), "--out", str(work / "filled.csv"),
                    "--quiet", "--threads", str(args.threads)]) == 0
    return pd.read_csv(work / "filled.csv")


def rmse(truth: pd.DataFrame, filled: pd.DataFrame, removed: np.ndarray) -> float:
    return float(np.sqrt(np.mean((truth.to_numpy(float) - filled.to_numpy(float))[removed] ** 2)))


def imputation(args: argparse.Namespace, work: Path) -> dict:
    table = load_breast_cancer(as_frame=True).data
    table = (table - table.mean()) / table.std()
    imputers = {"SimpleImputer (mean)": lambda seed: SimpleImputer(), "KNNImputer": lambda seed: KNNImputer(),
                "IterativeImputer": lambda seed: IterativeImputer(random_state=seed)}
    figures: dict[str, list[float]] = {"pyrovae": [], **{name: [] for name in imputers}}
    seconds = []
    for seed in range(args.seeds):
        incomplete, removed = remove(table, args.missing, seed)
        started = time.perf_counter()
        filled = pyrovae_impute(incomplete, work, f"breast-cancer-{seed}", args, seed)
        seconds.append(time.perf_counter() - started)
        figures["pyrovae"].append(rmse(table, filled, removed))
        for name, imputer in imputers.items():
            figures[name].append(rmse(table, pd.DataFrame(imputer(seed).fit_transform(incomplete)), removed))
        print(f"seed {seed}: " + ", ".join(f"{name} {values[-1]:.3f}" for name, values in figures.items()), flush=True)
    means = {name: float(np.mean(values)) for name, values in figures.items()}
    ratio = means["pyrovae"] / means["IterativeImputer"]
    rows = ["| method | RMSE on the removed cells (standardized), mean | per seed |", "|---|---|---|"]
    rows += [f"| {name} | {means[name]:.3f} | {', '.join(f'{v:.3f}' for v in values)} |"
             for name, values in figures.items()]
    verdict = "met" if ratio <= 0.95 else "missed"
    rows.append(f"\npyrovae / IterativeImputer: **{ratio:.3f}** (target <= 0.95: {verdict}); "
                f"pyrovae train + impute {np.mean(seconds):.0f} s a seed")
    return {"rmse": figures, "mean_rmse": means, "ratio_to_iterative": ratio, "pyrovae_seconds": seconds,
            "table": "\n".join(rows)}


def penguins() -> pd.DataFrame:
    from palmerpenguins import load_penguins

    return load_penguins().drop(columns="year")


def one_hot_iterative(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """IterativeImputer on the numbers and one-hot categories, the first level dropped (with all levels, each
    dummy is the exact complement of the others and the imputer keeps their means), each category back as the
    most probable level of its imputed dummies."""
    categorical = [column for column in frame if not pd.api.types.is_numeric_dtype(frame[column])]
    blocks = {column: pd.get_dummies(frame[column], drop_first=True, dtype=float) for column in categorical}
    for column, block in blocks.items():
        block[frame[column].isna()] = np.nan
    encoded = pd.concat([frame.drop(columns=categorical), *blocks.values()], axis=1)
    filled = pd.DataFrame(IterativeImputer(random_state=seed, max_iter=25).fit_transform(encoded),
                          columns=encoded.columns, index=frame.index)
    result = frame.copy()
    for column in frame:
        if column in blocks:
            dummies = filled[blocks[column].columns]
            first = sorted(frame[column].dropna().unique())[0]
            result[column] = pd.concat([1 - dummies.sum(axis=1).rename(first), dummies], axis=1).idxmax(axis=1)
        else:
            result[column] = filled[column]
    return result


def mode_mean(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.fillna({column: frame[column].mean() if pd.api.types.is_numeric_dtype(frame[column])
                         else frame[column].mode()[0] for column in frame})


def mixed_scores(truth: pd.DataFrame, filled: pd.DataFrame, removed: np.ndarray) -> dict[str, float]:
    numeric = [pd.api.types.is_numeric_dtype(truth[column]) for column in truth]
    categorical = ~np.array(numeric)
    z = truth.loc[:, numeric].std()
    errors = ((truth.loc[:, numeric] - filled.loc[:, numeric].astype(float)) / z).to_numpy()[removed[:, numeric]]
    hits = (truth.loc[:, categorical].astype(str).to_numpy() == filled.loc[:, categorical].astype(str).to_numpy())
    return {"accuracy": float(hits[removed[:, categorical]].mean()), "rmse": float(np.sqrt(np.mean(errors ** 2)))}


def mixed(args: argparse.Namespace, work: Path) -> dict:
    table = penguins()
    figures: dict[str, list[dict[str, float]]] = {"pyrovae": [], "IterativeImputer, one-hot": [], "mode/mean": []}
    for seed in range(args.seeds):
        incomplete, removed = remove(table, args.mixed_missing, seed)
        filled = {"pyrovae": pyrovae_impute(incomplete, work, f"penguins-{seed}", args, seed),
                  "IterativeImputer, one-hot": one_hot_iterative(incomplete, seed), "mode/mean": mode_mean(incomplete)}
        for name, frame in filled.items():
            figures[name].append(mixed_scores(table, frame, removed))
        print(f"seed {seed}: " + ", ".join(f"{name} {values[-1]}" for name, values in figures.items()), flush=True)
    means = {name: {key: float(np.mean([row[key] for row in rows])) for key in ("accuracy", "rmse")}
             for name, rows in figures.items()}
    ours = means["pyrovae"]
    met = all(ours["accuracy"] > other["accuracy"] and ours["rmse"] < other["rmse"]
              for name, other in means.items() if name != "pyrovae")
    rows = ["| method | category accuracy | numeric RMSE (standardized) |", "|---|---|---|"]
    rows += [f"| {name} | {value['accuracy']:.3f} | {value['rmse']:.3f} |" for name, value in means.items()]
    rows.append(f"\npyrovae ahead of both on both: {'met' if met else 'missed'}")
    return {"per_seed": figures, "means": means, "met": met, "table": "\n".join(rows)}


def two_sample_auc(real: pd.DataFrame, synthetic: pd.DataFrame, seed: int) -> float:
    """The 5-fold ROC AUC of a gradient-boosted classifier telling ``real`` rows from ``synthetic`` ones."""
    both = pd.get_dummies(pd.concat([real, synthetic[real.columns]], ignore_index=True), dtype=float)
    labels = np.r_[np.ones(len(real)), np.zeros(len(synthetic))]
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return float(cross_val_score(HistGradientBoostingClassifier(random_state=seed), both, labels, cv=folds,
                                 scoring="roc_auc").mean())


def pyrovae_rows(frame: pd.DataFrame, work: Path, name: str, n: int, args: argparse.Namespace, seed: int):
    run = pyrovae_run(frame, work, name, args, seed)
    assert pyrovae(["sample", str(run), "--n", str(n), "--out", str(work / f"{name}-rows.csv"), "--seed", str(seed),
                    "--quiet"]) == 0
    return pd.read_csv(work / f"{name}-rows.csv")


def synthetic(args: argparse.Namespace, work: Path) -> dict:
    complete = penguins().dropna().reset_index(drop=True)
    has_ctgan = subprocess.run([args.tvae_python, "-c", "import ctgan"], capture_output=True).returncode == 0
    figures: dict[str, list[float]] = {"pyrovae": [], "pyrovae, 20% of the training cells missing": []}
    if has_ctgan:
        figures["TVAE (ctgan)"] = []
    for seed in range(args.seeds):
        order = np.random.default_rng(seed).permutation(len(complete))
        train, held_out = complete.iloc[order[: len(order) // 2]], complete.iloc[order[len(order) // 2:]]
        n = len(held_out)
        rows = {"pyrovae": pyrovae_rows(train, work, f"synthetic-{seed}", n, args, seed),
                "pyrovae, 20% of the training cells missing":
                    pyrovae_rows(remove(train, args.mixed_missing, seed)[0], work, f"incomplete-{seed}", n, args, seed)}
        if has_ctgan:
            train.to_csv(work / "tvae-train.csv", index=False)
            subprocess.run([args.tvae_python, "-c", TVAE, str(work / "tvae-train.csv"), str(work / "tvae-rows.csv"),
                            str(args.epochs), str(n), str(seed)], check=True)
            rows["TVAE (ctgan)"] = pd.read_csv(work / "tvae-rows.csv")
        for name, frame in rows.items():
            figures[name].append(two_sample_auc(held_out, frame, seed))
        print(f"seed {seed}: " + ", ".join(f"{name} {values[-1]:.3f}" for name, values in figures.items()), flush=True)
    means = {name: float(np.mean(values)) for name, values in figures.items()}
    lines = ["| generator | two-sample ROC AUC (0.5 best), mean | per seed |", "|---|---|---|"]
    lines += [f"| {name} | {means[name]:.3f} | {', '.join(f'{v:.3f}' for v in values)} |"
              for name, values in figures.items()]
    met = means["pyrovae"] <= means["TVAE (ctgan)"] if has_ctgan else None
    verdict = f"not measured: {args.tvae_python} cannot import ctgan" if met is None else "met" if met else "missed"
    lines.append(f"\npyrovae <= TVAE: {verdict}")
    return {"auc": figures, "mean_auc": means, "met": met, "table": "\n".join(lines)}


def generated(rows: int, mixed_types: bool, seed: int = 0) -> tuple[pd.DataFrame, str]:
    """``rows`` x 20 columns: 8 real, 4 count, 4 binary and 4 categorical (5 levels), or 20 real; column types."""
    rng = np.random.default_rng(seed)
    if not mixed_types:
        return pd.DataFrame(rng.normal(size=(rows, 20))).add_prefix("real"), ""
    columns = {f"real{i}": rng.normal(size=rows) for i in range(8)}
    columns |= {f"count{i}": rng.poisson(3.0, size=rows) for i in range(4)}
    columns |= {f"binary{i}": rng.choice(["no", "yes"], size=rows) for i in range(4)}
    columns |= {f"category{i}": rng.choice(list("abcde"), size=rows) for i in range(4)}
    return pd.DataFrame(columns), ",".join(f"count{i}=count" for i in range(4))


def speed(args: argparse.Namespace, work: Path) -> dict:
    frames = {"mixed": generated(args.rows, True), "real": generated(args.rows, False)}
    tables = {kind: from_table(frame, column_types=types or None) for kind, (frame, types) in frames.items()}
    seconds: dict[str, list[float]] = {kind: [] for kind in tables}
    for _ in range(args.rounds):
        for kind, data in tables.items():
            vae = build_vae(ModelConfig(image_shape=data.image_shape, columns=data.schema.specs(), likelihood="table"))
            row = fit(vae, data, TrainConfig(epochs=1, batch_size=512, device="cpu"), progress=False, verbose=False)
            seconds[kind].append(row[-1]["epoch_seconds"])
    ratios = [mixed_s / real_s for mixed_s, real_s in zip(seconds["mixed"], seconds["real"])]
    ratio = float(np.median(ratios))
    train_rows = len(tables["mixed"].train)
    mixed_s, real_s = (float(np.median(seconds[kind])) for kind in ("mixed", "real"))
    table = (f"| epoch of {train_rows:,} training rows x 20 columns, batch 512 (s) | mixed | all real | ratio |\n"
             f"|---|---|---|---|\n| median of {args.rounds}, taking turns | {mixed_s:.2f} | {real_s:.2f} | "
             f"**{ratio:.2f}** |\n\ntarget <= 2: {'met' if ratio <= 2 else 'missed'}")
    return {"seconds": seconds, "ratios": ratios, "median_ratio": ratio, "train_rows": train_rows, "table": table}


PARTS = {"imputation": imputation, "mixed": mixed, "synthetic": synthetic, "speed": speed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    parser.add_argument("--seeds", type=int, default=5, help="mask (and split) seeds 0..N-1")
    parser.add_argument("--epochs", type=int, default=500, help="training epochs of pyrovae and TVAE")
    parser.add_argument("--train-flags", default="", help="extra `pyrovae train` flags, one string, e.g. "
                                                           "'--z-dim 20 --elbo iwae --particles 10' (default: none)")
    parser.add_argument("--missing", type=float, default=0.5, help="the share of breast cancer cells removed")
    parser.add_argument("--mixed-missing", type=float, default=0.2, help="the share of penguin cells removed")
    parser.add_argument("--tvae-python", default=sys.executable, help="a Python interpreter that imports ctgan")
    parser.add_argument("--rows", type=int, default=100_000, help="generated rows of the speed part")
    parser.add_argument("--rounds", type=int, default=3, help="epochs of each table in the speed part, taking turns")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--tag", help="added to the results' file names (e.g. for --train-flags runs)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 1 seed, 3 epochs, 5,000 rows, 1 round; "
                                                              "no results written")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.rows, args.rounds = 1, 3, 5_000, 1
    torch.set_num_threads(args.threads)
    for part in args.parts:
        with tempfile.TemporaryDirectory() as work:
            started = time.perf_counter()
            result = PARTS[part](args, Path(work))
        result |= {"seconds_in_all": time.perf_counter() - started, "epochs": args.epochs, "seeds": args.seeds,
                   "train_flags": args.train_flags, "threads": args.threads}
        print(f"\n## {part}\n\n{result['table']}\n", flush=True)
        if not args.quick:
            name = "-".join(filter(None, ["tables", part, args.tag, machine_name("cpu")]))
            (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
