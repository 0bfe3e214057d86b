"""The pictures of a table run: the marginals and correlations of the test rows against rows drawn from the model,
the missing cells, and the latent scatter coloured by a column; written in place of the image pictures."""

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from pyrovae import ModelConfig, build_vae
from pyrovae.data.datasets import Split, from_table
from pyrovae.randomness import seeded
from pyrovae.report import plots, table_plots

RNG = np.random.default_rng(0)
N = 100
CURVES = [{"epoch": 1, "train_loss": 9.0, "val_neg_elbo": 9.5}]


@pytest.fixture(scope="module")
def table():
    """A table of a real, a count, a binary and a categorical column, the first and last with missing cells."""
    frame = pd.DataFrame({"height": RNG.normal(170.0, 10.0, N), "visits": RNG.poisson(4, N),
                          "smoker": RNG.choice(["no", "yes"], N), "city": RNG.choice(["Lima", "Oslo", "Pune"], N)})
    frame.loc[RNG.random(N) < 0.2, "height"] = np.nan
    frame.loc[RNG.random(N) < 0.3, "city"] = np.nan
    return from_table(frame, column_types={"visits": "count"})


def table_vae(data, z_dim=2):
    vae = build_vae(ModelConfig(image_shape=data.image_shape, columns=data.schema.specs(), likelihood="table",
                                z_dim=z_dim, hidden=(8,)))
    vae.schema = data.schema
    return vae


def test_the_table_has_the_column_types_and_missing_cells_the_tests_need(table):
    assert [column.type for column in table.schema.columns] == ["real", "count", "binary", "categorical"]
    missing = table.test.x.isnan()
    assert missing[:, 0].any() and missing[:, 3].any() and not missing[:, 1:3].any()


def test_a_table_run_gets_the_table_pictures_in_place_of_the_image_pictures(table, tmp_path):
    paths = plots.save_run_pictures(table_vae(table), table.test, table.image_shape, tmp_path, metrics=CURVES)
    expected = {"training_curves", "latent_scatter", "kl_per_dim", "marginals", "correlations", "missingness"}
    assert {path.name for path in tmp_path.iterdir()} == {f"{name}.png" for name in expected}
    assert {path.name for path in paths} == {f"{name}.png" for name in expected}
    for path in paths:
        pixels = matplotlib.image.imread(path)
        assert min(pixels.shape[:2]) >= 300 and max(pixels.shape[:2]) <= 2000, path.name
        assert pixels[..., :3].std() > 0.05, f"{path.name} is (nearly) blank"


def test_only_names_a_table_picture(table, tmp_path):
    paths = plots.save_run_pictures(table_vae(table), table.test, table.image_shape, tmp_path, only=["missingness"])
    assert [path.name for path in paths] == ["missingness.png"]
    with pytest.raises(ValueError, match="does not apply to this run .the data are rows of a table"):
        plots.save_run_pictures(table_vae(table), table.test, table.image_shape, tmp_path, only=["samples"])


def test_an_image_run_gets_its_own_pictures_and_none_of_a_tables(small_vae, tmp_path):
    images = Split(torch.bernoulli(torch.full((12, 16), 0.4)), torch.arange(12) % 2)
    paths = plots.save_run_pictures(small_vae, images, (1, 4, 4), tmp_path, metrics=CURVES)
    assert {path.name for path in paths} == {f"{name}.png" for name in ("samples", "reconstructions", "training_curves",
                                                                        "latent_scatter", "manifold", "interpolation",
                                                                        "kl_per_dim")}
    unavailable = plots.unavailable_pictures(small_vae, images, CURVES, (1, 4, 4))
    assert {name: unavailable[name] for name in plots.TABLE_PICTURES} == dict.fromkeys(plots.TABLE_PICTURES,
                                                                                       plots.IMAGES)
    with pytest.raises(ValueError, match="marginals does not apply to this run .the data are images"):
        plots.save_run_pictures(small_vae, images, (1, 4, 4), tmp_path, only=["marginals"])


def test_rows_of_numbers_without_a_table_model_get_no_table_pictures(small_vae, table):
    rows = Split(torch.rand(5, 16), torch.zeros(5, dtype=torch.long))
    assert plots.unavailable_pictures(small_vae, rows, CURVES, (1, 1, 16))["marginals"] == plots.NO_SCHEMA
    no_schema = table_vae(table)
    no_schema.schema = None
    assert plots.unavailable_pictures(no_schema, table.test, CURVES, table.image_shape)["missingness"] == \
        plots.NO_SCHEMA


@pytest.mark.parametrize("color_by, words", [("height", "is a real column"), ("weight", "is not a column")])
def test_color_by_a_numeric_or_unknown_column_is_refused_in_one_line_naming_the_choices(table, tmp_path, color_by,
                                                                                       words):
    options = plots.PictureOptions(color_by=color_by)
    with pytest.raises(ValueError) as error:
        plots.save_run_pictures(table_vae(table), table.test, table.image_shape, tmp_path, CURVES, options=options)
    message = str(error.value)
    assert f"color_by={color_by!r} {words}" in message and "'smoker', 'city'" in message and "\n" not in message
    assert not list(tmp_path.iterdir())  # refused before drawing


def test_color_by_an_image_run_is_refused(small_vae, tmp_path):
    images = Split(torch.rand(4, 16), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="color_by='city' colours a table's latent scatter"):
        plots.save_run_pictures(small_vae, images, (1, 4, 4), tmp_path, options=plots.PictureOptions(color_by="city"))


def legend(fig):
    box = fig.axes[0].get_legend()
    return box.get_title().get_text(), [text.get_text() for text in box.get_texts()]


def points_of(fig, label):
    """The points the latent scatter drew under ``label`` in its legend."""
    return next(c for c in fig.axes[0].collections if c.get_label() == label).get_offsets()


def test_the_latent_scatter_is_coloured_by_the_first_categorical_column_missing_cells_grey(table):
    fig = plots.run_figures(table_vae(table), table.test, table.image_shape, CURVES)["latent_scatter"]()
    assert legend(fig) == ("city", ["missing", "Lima", "Oslo", "Pune"])
    city = table.test.x[:, 3]
    assert len(points_of(fig, "missing")) == city.isnan().sum()
    assert len(points_of(fig, "Oslo")) == (city == 1).sum()
    assert tuple(points_of(fig, "missing").data[0]) != tuple(points_of(fig, "Lima").data[0])


def test_color_by_chooses_the_column_and_a_table_of_numbers_is_uncoloured(table):
    options = plots.PictureOptions(color_by="smoker")
    fig = plots.run_figures(table_vae(table), table.test, table.image_shape, CURVES, options)["latent_scatter"]()
    assert legend(fig) == ("smoker", ["no", "yes"])
    numbers = from_table(pd.DataFrame({"a": RNG.normal(size=30), "b": RNG.normal(size=30)}))
    fig = table_plots.table_latent_scatter_figure(table_vae(numbers), numbers.test)
    assert fig.axes[0].get_legend() is None and len(fig.axes[0].collections) == 1
    assert table_plots.color_column(table.schema) == 3
    assert table_plots.color_column(table.schema.__class__(table.schema.columns[:3])) == 2  # no categorical: binary


@pytest.mark.parametrize("z_dim, tsne, ylabel", [(1, False, "smoker (jittered)"), (3, False, "principal direction 2"),
                                                 (3, True, "t-SNE 2")])
def test_the_table_latent_scatter_draws_every_latent_size_on_the_plane_of_the_image_scatter(table, z_dim, tsne,
                                                                                            ylabel):
    fig = table_plots.table_latent_scatter_figure(table_vae(table, z_dim), table.test, "smoker", tsne=tsne)
    assert fig.axes[0].get_ylabel() == ylabel
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == len(table.test)


def test_the_missingness_pattern_is_the_mask_of_the_missing_cells(table):
    fig = table_plots.missingness_figure(table.test, table.schema)
    pattern, shares = fig.axes
    missing = table.test.x.isnan().numpy()
    assert np.array_equal(pattern.images[0].get_array(), missing)
    assert [bar.get_height() for bar in shares.patches] == pytest.approx(missing.mean(0))
    assert [label.get_text() for label in shares.get_xticklabels()] == table.schema.names


def test_the_missingness_pattern_draws_the_first_rows_of_many(table, monkeypatch):
    monkeypatch.setattr(table_plots, "MAX_ROWS", 7)
    fig = table_plots.missingness_figure(table.test, table.schema)
    assert np.array_equal(fig.axes[0].images[0].get_array(), table.test.x[:7].isnan().numpy())
    assert f"the first 7 of {len(table.test)} test rows" in fig.axes[0].get_title()


def test_the_marginals_draw_a_panel_per_column_numbers_as_densities_levels_as_shares(table):
    fig = table_plots.marginals_figure(table_vae(table), table.test)
    assert [ax.get_title() for ax in fig.axes] == ["height (real)", "visits (count)", "smoker (binary)",
                                                   "city (categorical)"]
    height, _, smoker, city = fig.axes
    assert len(city.patches) == 2 * 3 and len(smoker.patches) == 2 * 2  # test and model bars per level
    assert [bars.get_label() for bars in city.containers] == ["test rows", "model"]
    observed = table.test.x[:, 3][~table.test.x[:, 3].isnan()]
    assert [bar.get_height() for bar in city.patches[:3]] == pytest.approx(
        [(observed == level).float().mean().item() for level in range(3)])
    assert [label.get_text() for label in city.get_xticklabels()] == ["Lima", "Oslo", "Pune"]
    test_values, model_values = (patch.get_path().vertices[:, 0] for patch in height.patches)
    column = table.schema.columns[0]
    cells = table.test.x[:, 0][~table.test.x[:, 0].isnan()].double() * column.std + column.mean
    assert test_values.min() <= cells.min() + 1e-3 and cells.max() - 1e-3 <= test_values.max()  # the table's units
    assert np.array_equal(np.unique(test_values), np.unique(model_values))  # shared bins


def test_the_marginals_draw_the_first_columns_of_many_and_say_so(table, monkeypatch):
    monkeypatch.setattr(table_plots, "MAX_COLUMNS", 2)
    fig = table_plots.marginals_figure(table_vae(table), table.test)
    assert len(fig.axes) == 2 and "the first 2 of 4 columns" in fig.get_suptitle()


def test_the_correlations_set_the_pairwise_complete_test_rows_beside_as_many_seeded_model_rows(table):
    vae = table_vae(table)
    fig = table_plots.correlations_figure(vae, table.test, seed=3)
    with seeded(vae.device, 3):
        drawn = vae.sample_rows(len(table.test))
    for ax, rows in zip(fig.axes, (table.test.x, drawn)):
        expected = pd.DataFrame(rows.numpy()).corr().to_numpy()
        assert np.allclose(ax.images[0].get_array(), expected, equal_nan=True)
        assert ax.images[0].get_clim() == (-1, 1)
        assert [label.get_text() for label in ax.get_yticklabels()] == table.schema.names
    assert not np.isnan(fig.axes[0].images[0].get_array()).any()  # missing cells left out pair by pair
