"""The table model (issue 34): a masked site per column type, closed forms, training, refusals."""

import math

import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from torch import nn

import pyrovae
from pyrovae.inference.imputation import impute
from pyrovae.inference.objectives import IWAEBound, MeanFieldELBO
from pyrovae.model.build import build_vae
from pyrovae.model.columns import TableLikelihood, parse_column
from pyrovae.model.config import ModelConfig
from pyrovae.model.priors import VampPrior
from pyrovae.model.tables import TableInputs, TableVAE, table_encoder
from pyrovae.settings import SettingError

NAN = float("nan")
COLUMNS = ("categorical:3", "real", "binary", "count", "positive", "categorical:2")
"""One column of every type, out of the decoder's type order, and two categoricals of different level counts."""
SCALE = 0.7
# The decoder's outputs, type by type: real loc, positive log-loc, count log-rate, binary logit, 3 + 2 logits.
THETA = torch.tensor([0.3, -0.2, 1.1, 0.4, 0.5, -1.0, 2.0, 0.2, -0.6])
X = torch.tensor([[2.0, 0.5, 1.0, 3.0, 1.5, 1.0],
                  [NAN, -1.2, NAN, 0.0, NAN, 0.0],
                  [0.0, NAN, 0.0, NAN, 0.2, NAN]])


class Constant(nn.Module):
    """A decoder whose outputs are ``theta`` whatever z is."""

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(*z.shape[:-1], -1)


def constant_vae() -> TableVAE:
    likelihood = TableLikelihood(COLUMNS, SCALE, learn_scale=None)
    return TableVAE(table_encoder(COLUMNS, 2, (8,)), Constant(THETA), 2, likelihood)


def by_hand(j: int) -> torch.distributions.Distribution:
    """p(x_j|z) of column j of :data:`COLUMNS` under :data:`THETA`, built with torch.distributions."""
    return [torch.distributions.Categorical(logits=THETA[4:7]), torch.distributions.Normal(THETA[0], SCALE),
            torch.distributions.Bernoulli(logits=THETA[3]), torch.distributions.Poisson(THETA[2].exp()),
            torch.distributions.LogNormal(THETA[1], SCALE), torch.distributions.Categorical(logits=THETA[7:9])][j]


@pytest.mark.parametrize("kind", ["real", "positive", "count", "binary", "categorical"])
def test_a_site_sums_the_log_densities_of_its_observed_cells_only(kind):
    vae = constant_vae()
    trace = poutine.trace(poutine.condition(vae.model, {"z": torch.zeros(3, 2)})).get_trace(X)
    trace.compute_log_prob()
    columns = [j for j, spec in enumerate(COLUMNS) if parse_column(spec)[0] == kind]
    expected = torch.tensor([sum(by_hand(j).log_prob(X[i, j]).item() for j in columns if not X[i, j].isnan())
                             for i in range(len(X))])
    assert torch.allclose(trace.nodes[f"x_{kind}"]["log_prob"].detach(), expected, atol=1e-5)
    assert {name for name in trace.nodes if name.startswith("x_")} == {f"x_{t}" for t in
                                                                       ("real", "positive", "count", "binary",
                                                                        "categorical")}


def test_missing_cells_leave_the_gradients_finite():
    vae = constant_vae()
    loss = -poutine.trace(vae.model).get_trace(X).log_prob_sum()
    loss.backward()
    assert torch.isfinite(vae.decoder.theta.grad).all() and vae.decoder.theta.grad.abs().sum() > 0


def test_the_column_distributions_and_means_are_the_columns():
    vae = constant_vae()
    columns = vae.column_distributions(torch.zeros(4, 3, 2))
    assert len(columns) == len(COLUMNS) and all(column.batch_shape == (4, 3) for column in columns)
    for j, column in enumerate(columns):
        value = X[0, j]
        assert torch.allclose(column.log_prob(value.expand(4, 3)), by_hand(j).log_prob(value).expand(4, 3))
    mean = vae.decode(torch.zeros(1, 2))[0]
    expected = [THETA[4:7].argmax(), THETA[0], THETA[3].sigmoid(), THETA[2].exp(), (THETA[1] + SCALE ** 2 / 2).exp(),
                THETA[7:9].argmax()]
    assert torch.allclose(mean, torch.stack(expected).float())


def test_sample_rows_draws_values_each_column_can_hold():
    torch.manual_seed(0)
    rows = constant_vae().sample_rows(200)
    assert rows.shape == (200, len(COLUMNS))
    constant_vae().check_data(rows, "rows")  # every drawn cell lies in its column's support
    assert set(rows[:, 0].tolist()) == {0.0, 1.0, 2.0} and set(rows[:, 5].tolist()) == {0.0, 1.0}
    assert constant_vae().sample_rows(0).shape == (0, len(COLUMNS))


def test_the_encoder_reads_observed_cells_zero_where_missing_and_the_mask():
    inputs = TableInputs(COLUMNS)(X)
    # real, count as log1p, positive as log, binary, one-hot 3 + 2, then the mask of the 6 columns
    assert inputs.shape == (3, 4 + 5 + 6) and TableInputs(COLUMNS).size == 15
    assert torch.allclose(inputs[1], torch.tensor([-1.2, 0.0, 0.0, 0.0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1]))
    assert torch.allclose(inputs[0, :4], torch.tensor([0.5, math.log(1.5), math.log1p(3.0), 1.0]))


class ExactPosterior(nn.Module):
    """(loc, scale) of factor analysis' posterior of z given a row's observed cells, its scale a little wider."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, noise: float):
        super().__init__()
        self.weight, self.bias, self.noise = weight, bias, noise

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen = (~x.isnan()).to(x.dtype)
        precision = torch.eye(self.weight.shape[1]) + self.weight.T @ (self.weight * seen[:, :, None]) / self.noise**2
        covariance = torch.linalg.inv(precision)
        residual = (x - self.bias).nan_to_num(0.0) / self.noise**2
        loc = (covariance @ (self.weight.T @ residual[:, :, None]))[..., 0]
        return loc, 1.2 * covariance.diagonal(dim1=-2, dim2=-1).sqrt()


def test_the_importance_estimate_is_factor_analysis_log_p_of_the_observed_cells():
    vae, x, (weight, bias, noise) = factor_analysis()
    estimate = pyrovae.log_likelihood(vae, x, num_samples=5000)
    for row, value in zip(x, estimate):
        seen = ~row.isnan()
        marginal = dist.MultivariateNormal(bias[seen], weight[seen] @ weight[seen].T + noise**2 * torch.eye(seen.sum()))
        assert abs(value.item() - marginal.log_prob(row[seen]).item()) < 0.05


def factor_analysis():
    """A factor-analysis table VAE (5 real columns, z in R^2) with its exact posterior as encoder, and six rows
    with 1 to 4 missing cells."""
    torch.manual_seed(0)
    weight, bias, noise = torch.randn(5, 2), torch.randn(5), 0.5
    decoder = nn.Linear(2, 5)
    with torch.no_grad():
        decoder.weight.copy_(weight)
        decoder.bias.copy_(bias)
    likelihood = TableLikelihood(("real",) * 5, noise, learn_scale=None)
    vae = TableVAE(ExactPosterior(weight, bias, noise), decoder, 2, likelihood)
    x = bias + torch.randn(6, 2) @ weight.T + noise * torch.randn(6, 5)
    x[0, 1] = x[1, [0, 3]] = x[2, [1, 2, 4]] = x[3, :4] = NAN
    return vae, x, (weight, bias, noise)


def conditional_gaussian(row, weight, bias, noise):
    """The mean and covariance of the missing cells of ``row`` given its observed ones, under factor analysis."""
    seen = ~row.isnan()
    covariance = weight @ weight.T + noise**2 * torch.eye(len(row))
    gain = covariance[~seen][:, seen] @ torch.linalg.inv(covariance[seen][:, seen])
    mean = bias[~seen] + gain @ (row[seen] - bias[seen])
    return mean, covariance[~seen][:, ~seen] - gain @ covariance[seen][:, ~seen]


def test_imputation_with_the_exact_posterior_is_the_exact_conditional_mean():
    vae, x, parameters = factor_analysis()
    filled = impute(vae, x, num_samples=5000)
    for row, imputed in zip(x, filled):
        seen = ~row.isnan()
        assert torch.equal(imputed[seen], row[seen])
        if (~seen).any():
            mean, _ = conditional_gaussian(row, *parameters)
            assert torch.allclose(imputed[~seen], mean, atol=0.03)


def test_multiple_imputations_spread_as_the_conditional_distribution():
    vae, x, parameters = factor_analysis()
    draws = impute(vae, x, num_samples=2000, draws=3000)
    assert draws.shape == (3000, *x.shape)
    row = x[2]
    mean, covariance = conditional_gaussian(row, *parameters)
    cells = draws[:, 2, row.isnan()]
    assert torch.equal(draws[:, 2, ~row.isnan()], row[~row.isnan()].expand(3000, -1))
    assert torch.allclose(cells.mean(0), mean, atol=0.08)
    assert torch.allclose(cells.var(0), covariance.diagonal(), rtol=0.15)


def test_single_imputation_takes_each_columns_most_probable_value():
    vae = constant_vae()
    filled = impute(vae, X, num_samples=10)
    expected = [THETA[4:7].argmax(), THETA[0], (THETA[3] > 0).float(), THETA[2].exp().round(),
                by_hand(4).mean, THETA[7:9].argmax()]
    for j, value in enumerate(expected):
        missing = X[:, j].isnan()
        assert torch.allclose(filled[missing, j], torch.as_tensor(value, dtype=torch.float32).expand(missing.sum()))
    assert torch.equal(filled[~X.isnan()], X[~X.isnan()])
    with pytest.raises(ValueError, match="draws"):
        impute(vae, X, draws=0)


@pytest.mark.parametrize("settings, loss", [
    ({}, Trace_ELBO()),
    ({"learn_scale": "decoder"}, MeanFieldELBO()),
    ({"guide": "iaf", "prior": "mixture", "prior_components": 2}, IWAEBound(num_particles=4)),  # MIWAE
])
def test_training_on_a_mixed_table_with_missing_cells_lowers_the_loss(settings, loss):
    pyro.clear_param_store()
    torch.manual_seed(0)
    n = 64
    z = torch.randn(n)
    x = torch.stack([(z > 0).float() + (z > 1).float(), z + 0.1 * torch.randn(n), (z > 0.3).float(),
                     torch.poisson((1 + z).exp()), (0.5 * z).exp(), (z < -0.5).float()], dim=-1)
    x[torch.rand(x.shape) < 0.2] = NAN
    x[x.isnan().all(-1), 1] = 0.0
    config = ModelConfig(image_shape=(1, 1, 6), columns=COLUMNS, likelihood="table", z_dim=2, hidden=(16,),
                         likelihood_scale=1.0, **settings)
    vae = build_vae(config)
    vae.check_data(x)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.02}), loss)
    losses = [svi.step(x) for _ in range(150)]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 1.0 * n
    assert torch.isfinite(pyrovae.log_likelihood(vae, x, num_samples=20)).all()


def test_the_table_config_sets_one_learned_scale_per_column():
    config = ModelConfig(image_shape=(1, 1, 2), columns=["real", "count"], likelihood="table")
    assert config.learn_scale == "pixel" and config.columns == ("real", "count")
    vae = build_vae(config)
    assert isinstance(vae, TableVAE) and vae.columns == ("real", "count") and vae.x_dim == 2


@pytest.mark.parametrize("settings, named", [
    ({"likelihood": "table"}, "columns"),
    ({"columns": ("real",), "likelihood": "gaussian"}, "likelihood='table'"),
    ({"columns": ("real", "ordinal"), "likelihood": "table"}, "'ordinal'"),
    ({"columns": ("categorical:1",), "likelihood": "table"}, "L >= 2"),
    ({"columns": (), "likelihood": "table"}, "empty"),
    ({"columns": ("real",), "likelihood": "table", "image_shape": (1, 1, 2)}, "(1, 1, 1)"),
    ({"columns": ("real",), "likelihood": "table", "prior": "vamp"}, "prior='vamp'"),
    ({"columns": ("real",), "likelihood": "table", "net": "conv"}, "net='conv'"),
    ({"columns": ("real",), "likelihood": "table", "latent_layers": 2}, "latent_layers=2"),
    ({"columns": ("real",), "likelihood": "table", "prior": "class-means", "num_classes": 3},
     "prior='class-means'"),
])
def test_table_settings_that_do_not_fit_are_refused_in_one_line(settings, named):
    settings = {"image_shape": (1, 1, len(settings.get("columns") or ()) or 1), **settings}
    with pytest.raises(SettingError) as error:
        ModelConfig(**settings)
    assert "\n" not in str(error.value) and named in str(error.value)


@pytest.mark.parametrize("column, value, named", [
    (1, float("inf"), "column 1 (real)"), (4, 0.0, "column 4 (positive)"), (3, -1.0, "column 3 (count)"),
    (3, 1.5, "column 3 (count)"), (2, 2.0, "column 2 (binary)"), (0, 3.0, "column 0 (categorical:3)"),
    (5, 0.5, "column 5 (categorical:2)"),
])
def test_values_outside_a_column_type_are_refused_in_one_line_naming_the_column(column, value, named):
    x = X.clone()
    x[0, column] = value
    with pytest.raises(ValueError) as error:
        constant_vae().check_data(x, "rows")
    assert "\n" not in str(error.value) and named in str(error.value) and "NaN" in str(error.value)


def test_a_row_with_every_cell_missing_and_bad_shapes_are_refused():
    x = X.clone()
    x[2] = NAN
    with pytest.raises(ValueError, match="row 2 has every cell missing; drop"):
        constant_vae().check_data(x)
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        constant_vae().check_data(X[:, :5])
    with pytest.raises(ValueError, match="whole number"):
        constant_vae().sample_rows(-1)


def test_a_table_model_refuses_labels_and_the_vamp_prior():
    likelihood = TableLikelihood(("real",), 1.0)
    encoder, decoder = table_encoder(("real",), 2, (4,)), nn.Linear(2, 1)
    with pytest.raises(ValueError, match="reads no labels"):
        TableVAE(encoder, decoder, 2, likelihood, decoder_conditioning=True, num_classes=2)
    with pytest.raises(ValueError, match="vamp"):
        TableVAE(encoder, decoder, 2, likelihood, prior=VampPrior(encoder, 1, 2))


def test_start_at_centres_positive_and_count_columns_on_their_observed_cells():
    likelihood = TableLikelihood(COLUMNS, SCALE)
    x = X.clone()
    x[:, 3], x[:, 4] = torch.tensor([3000.0, 5000.0, NAN]), torch.tensor([40.0, NAN, 90.0])
    likelihood.start_at(x)
    columns = likelihood.column_distributions(torch.zeros(len(THETA)))  # an untrained decoder's outputs: 0
    assert columns[3].mean.item() == pytest.approx(4000.0, rel=1e-5)  # the count's rate: the mean count
    assert columns[4].loc.item() == pytest.approx((math.log(40.0) + math.log(90.0)) / 2, rel=1e-6)  # mean log x
    assert columns[1].loc.item() == 0.0 and torch.allclose(columns[0].probs, torch.full((3,), 1 / 3))  # no offset


def test_fit_starts_counts_and_positives_in_the_thousands_where_they_are():
    rows = 200
    gen = torch.Generator().manual_seed(0)
    frame = pd.DataFrame({"grams": torch.poisson(torch.full((rows,), 3000.0), generator=gen).numpy(),
                          "length": torch.exp(torch.randn(rows, generator=gen) * 0.1 + math.log(50.0)).numpy()})
    data = pyrovae.from_table(frame, column_types="grams=count,length=positive")
    vae = build_vae(ModelConfig(image_shape=(1, 1, 2), columns=data.columns, likelihood="table", z_dim=2,
                                hidden=(8,)))
    pyrovae.fit(vae, data, pyrovae.TrainConfig(epochs=1, batch_size=50, device="cpu"), progress=False, verbose=False)
    drawn = vae.sample_rows(500)
    assert drawn[:, 0].mean().item() == pytest.approx(3000.0, rel=0.2)
    assert drawn[:, 1].mean().item() == pytest.approx(50.0, rel=0.2)
