"""A table model's evaluation report: each column type's part of the log-likelihood (issue 34)."""

import math

import pytest
import torch

import pyrovae
from pyrovae.inference.evaluate import _log_mean_weight, evaluation_report, vae_sampler
from pyrovae.inference.importance import trace_weights
from pyrovae.model.tables import TableVAE
from pyrovae.randomness import seeded

NAN = float("nan")
COLUMNS = ("real", "count", "binary", "categorical:3", "real")
X = torch.tensor([[0.5, 2.0, 1.0, 0.0, NAN],
                  [NAN, 0.0, 0.0, 2.0, -1.0],
                  [1.5, NAN, 1.0, NAN, 0.3],
                  [-0.2, 4.0, NAN, 1.0, 2.0]])
SITES = ["x_real", "x_count", "x_binary", "x_categorical"]
PER_TYPE = ("nll_by_type", "nll_share_by_type", "observed_cells_by_type")


def table_vae() -> TableVAE:
    torch.manual_seed(0)
    return pyrovae.build_vae(pyrovae.ModelConfig(image_shape=(1, 1, len(COLUMNS)), columns=COLUMNS,
                                                 likelihood="table", z_dim=2, hidden=(8,)))


def log_lik_by_type(vae: TableVAE, z: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """log p(x_type,obs | z) of each type, from p(x_j|z) column by column, missing cells left out."""
    observed = ~x.isnan()
    cells = [torch.where(observed[:, j], column.log_prob(x[:, j].nan_to_num(0.0)), 0.0)
             for j, column in enumerate(vae.column_distributions(z))]
    return {kind: sum(cells[j] for j in group) for kind, group in vae.likelihood.groups.items()}


def test_only_a_table_model_with_importance_samples_reports_the_types():
    vae = table_vae()
    report = evaluation_report(vae, X, num_samples=4)
    assert all(list(report[key]) == ["real", "count", "binary", "categorical"] for key in PER_TYPE)
    assert not set(PER_TYPE) & set(evaluation_report(vae, X, num_samples=None))
    images = pyrovae.build_vae(pyrovae.ModelConfig(image_shape=(1, 2, 2), z_dim=2, hidden=(8,)))
    assert not set(PER_TYPE) & set(evaluation_report(images, torch.rand(5, 4).round(), num_samples=4))


@pytest.mark.parametrize("num_samples, particles", [(1, 1), (6, 6), (6, 2)])
def test_each_type_is_its_log_likelihood_under_the_weights_of_all_k_draws(num_samples, particles):
    """Against the same draws redone by hand: the weights softmax-normalized over all K, however they are chunked,
    and each type's log-likelihood from the columns' distributions (with K = 1, the one draw's)."""
    vae = table_vae()
    sampler = vae_sampler(vae, X)
    with seeded(vae.device, 7):
        estimates = _log_mean_weight(sampler, slice(None), num_samples, particles, SITES)
    with seeded(vae.device, 7):
        drawn = [sampler.traces(slice(None), particles) for _ in range(num_samples // particles)]
    log_w = torch.cat([trace_weights(*traces, sampler.layout, particles, len(X)) for traces in drawn])
    z = torch.cat([guide_trace.nodes["z"]["value"] for guide_trace, _ in drawn])
    by_hand = log_lik_by_type(vae, z, X)
    torch.testing.assert_close(estimates[:, 0], log_w.logsumexp(0) - math.log(num_samples))
    for column, kind in enumerate(vae.likelihood.groups, start=1):
        torch.testing.assert_close(estimates[:, column], (log_w.softmax(0) * by_hand[kind]).sum(0), rtol=1e-5,
                                   atol=1e-5)


def test_with_a_decoder_that_ignores_z_each_type_is_its_log_likelihood_per_row():
    """p(x|z) the same for every z, so any weights summing to 1 give exactly -mean_rows log p(x_type,obs)."""
    vae = table_vae()
    with torch.no_grad():
        vae.decoder.net[-1].weight.zero_()
    by_hand = log_lik_by_type(vae, torch.zeros(len(X), 2), X)
    report = evaluation_report(vae, X, num_samples=8, seed=3)
    assert report["nll_by_type"] == pytest.approx({kind: -value.mean().item() for kind, value in by_hand.items()},
                                                  rel=1e-5)


def test_a_type_with_every_cell_missing_scores_nothing():
    x = X.clone()
    x[:, 2] = NAN
    report = evaluation_report(table_vae(), x, num_samples=5)
    assert report["nll_by_type"]["binary"] == 0.0 and report["nll_share_by_type"]["binary"] == 0.0
    assert report["observed_cells_by_type"] == {"real": 1.5, "count": 0.75, "binary": 0.0, "categorical": 0.75}
    assert all(report["nll_by_type"][kind] != 0.0 for kind in ("real", "count", "categorical"))


def test_the_shares_are_parts_of_the_sum_and_the_numbers_repeat_under_one_seed():
    vae = table_vae()
    report = evaluation_report(vae, X, num_samples=5, seed=1)
    nll, shares = report["nll_by_type"], report["nll_share_by_type"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares == pytest.approx({kind: value / sum(nll.values()) for kind, value in nll.items()})
    assert report == evaluation_report(vae, X, num_samples=5, seed=1)
    assert report["nll_by_type"] != evaluation_report(vae, X, num_samples=5, seed=2)["nll_by_type"]
