"""A VAE of a table with missing values: the Palmer penguins (344 rows, 8 columns).

    python examples/tables.py --epochs 200 --out runs/penguins

The table has real missing cells (sex is blank in 11 rows) and columns of several types:
species, island and year are categorical (year has three values), sex binary, the four
measurements real. The example holds out a fifth of the rows, trains on the rest with the
missing cells masked out of the likelihood, then, on the held-out rows:

- removes a fifth of their observed cells at random, imputes them and scores the guesses
  against the removed values (accuracy, RMSE), beside guessing the training rows' most
  frequent level or mean;
- draws multiple imputations and gives their spread beside the single imputation's error;
- estimates -log p(x_obs) per row, of the rows as they are and with the cells removed.

It writes OUT/run/ (the run: `pyrovae sample OUT/run --out rows.csv` and
`pyrovae impute OUT/run --dataset OUT/incomplete.csv --out filled.csv` read it),
OUT/incomplete.csv, OUT/filled.csv, OUT/imputations.csv (20 imputations, numbered in the
column `imputation`) and OUT/synthetic.csv (rows drawn from the model).
"""

import argparse
from pathlib import Path

import numpy as np
import pyro
from palmerpenguins import load_penguins

import pyrovae

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--epochs", type=int, default=200)
parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="runs/penguins", help="folder for the run and the tables written")
args = parser.parse_args()
out = Path(args.out)

penguins = load_penguins()
rng = np.random.default_rng(args.seed)
order = rng.permutation(len(penguins))
held_out = len(penguins) // 5
test = penguins.iloc[order[:held_out]].reset_index(drop=True)
train = penguins.iloc[order[held_out:]].reset_index(drop=True)

pyro.set_rng_seed(args.seed)
data = pyrovae.from_table(train, test)  # each column's type inferred from the training rows
print("columns:", ", ".join(f"{column.name} ({column.type})" for column in data.schema.columns))
# the settings `pyrovae train` gives a table (pyrovae.defaults.TABLE_DEFAULTS): MIWAE's bound, K = 20
vae = pyrovae.build_vae(pyrovae.ModelConfig(image_shape=data.image_shape, likelihood="table", columns=data.columns,
                                            z_dim=20, hidden=(128, 128)))
pyrovae.fit(vae, data, pyrovae.TrainConfig(epochs=args.epochs, elbo="iwae", particles=20, batch_size=64,
                                           device=args.device, seed=args.seed),
            run_dir=out / "run", progress=False, verbose=False)

# remove a fifth of the held-out rows' observed cells, then fill them in
removed = (rng.random(test.shape) < 0.2) & test.notna().to_numpy()
incomplete = test.mask(removed)
incomplete.to_csv(out / "incomplete.csv", index=False)
filled = pyrovae.impute(vae, incomplete, num_samples=1000)  # the weighted posterior mean (a level: the likeliest)
filled.to_csv(out / "filled.csv", index=False)
draws = pyrovae.impute(vae, incomplete, num_samples=1000, draws=20)  # 20 imputations, column "imputation" first
draws.to_csv(out / "imputations.csv", index=False)

print(f"{int(removed.sum())} cells removed from {held_out} held-out rows and imputed:")
for j, column in enumerate(data.schema.columns):
    rows = removed[:, j]
    truth, guess = test[column.name][rows], filled[column.name][rows]
    if column.levels is not None:
        baseline = (truth == train[column.name].mode()[0]).mean()
        print(f"  {column.name:18} {rows.sum():3} cells, accuracy {(truth == guess).mean():.2f} "
              f"(most frequent level: {baseline:.2f})")
    else:
        spread = draws[column.name].to_numpy().reshape(-1, held_out)[:, rows].std(0).mean()  # over the 20 draws
        print(f"  {column.name:18} {rows.sum():3} cells, RMSE {np.sqrt(((truth - guess) ** 2).mean()):7.2f} "
              f"(mean: {np.sqrt(((truth - train[column.name].mean()) ** 2).mean()):7.2f}); "
              f"the draws' standard deviation {spread:.2f}")

synthetic = vae.schema.decode(vae.sample_rows(1000))  # rows x ~ p(x|z), z ~ p(z), in the table's columns
synthetic.to_csv(out / "synthetic.csv", index=False)
shares = synthetic["species"].value_counts(normalize=True).round(2).to_dict()
print(f"1000 synthetic rows in {out / 'synthetic.csv'}; species shares {shares}, in the data "
      f"{penguins['species'].value_counts(normalize=True).round(2).to_dict()}")

for what, rows in (("as they are", data.test.x), ("with the cells removed", vae.schema.encode(incomplete, "rows"))):
    log_p = pyrovae.log_likelihood(vae, rows, num_samples=1000)  # log p(x_obs) of each row, the missing cells left out
    print(f"held-out rows {what}: -log p(x_obs) = {-log_p.mean().item():.2f} "
          f"+- {log_p.std().item() / len(log_p) ** 0.5:.2f} nats per row (K = 1000)")
