import hashlib
import subprocess
import sys

import matplotlib.image
import numpy as np
import pyro
import pytest
import torch
from matplotlib.figure import Figure

from pyrovae import DataConfig, ModelConfig, TrainConfig, build_vae, fit, load_dataset
from pyrovae.cli import main
from pyrovae.data.datasets import Split
from pyrovae.report import plots
from pyrovae.report.latents import active_units, encoder_means, kl_per_dimension, principal_directions
from pyrovae.runs.rundir import RunDir


def image_pictures():
    """The files an unconditional image run's pictures are written to."""
    return {f"{name}.png" for name in plots.PICTURES if name not in ("class_samples", *plots.TABLE_PICTURES)}


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(dataset="digits", binarize="dynamic"))


def trained(digits, z_dim=2, seed=0, epochs=3, **model):
    pyro.set_rng_seed(seed)
    vae = build_vae(ModelConfig(image_shape=digits.image_shape, z_dim=z_dim, hidden=(64,), **model))
    history = fit(vae, digits, TrainConfig(epochs=epochs, seed=seed), progress=False)
    return vae, history


def png_pixels(path):
    return matplotlib.image.imread(path)


@pytest.fixture(scope="module")
def two_runs(digits, tmp_path_factory):
    """The pictures of two models that differ only in their seed, plus a redraw of the first."""
    folders = {}
    for name, seed in (("a", 0), ("b", 1), ("a_again", 0)):
        vae, history = trained(digits, seed=seed)
        folders[name] = tmp_path_factory.mktemp(name)
        plots.save_run_pictures(vae, digits.test, digits.image_shape, folders[name], metrics=history)
    return folders


def test_every_picture_that_applies_is_written_as_a_readable_png(two_runs):
    written = {p.name for p in two_runs["a"].iterdir()}
    assert written == image_pictures()
    for path in two_runs["a"].iterdir():
        pixels = png_pixels(path)
        assert min(pixels.shape[:2]) >= 100 and max(pixels.shape[:2]) >= 300
        assert pixels[..., :3].std() > 0.05, f"{path.name} is (nearly) blank"


def test_pictures_are_deterministic_and_change_with_the_model(two_runs):
    def digest(folder, name):
        return hashlib.sha256((folder / name).read_bytes()).hexdigest()

    for path in two_runs["a"].iterdir():
        assert digest(two_runs["a"], path.name) == digest(two_runs["a_again"], path.name), path.name
        assert not np.array_equal(png_pixels(path), png_pixels(two_runs["b"] / path.name)), path.name


def test_image_grid_tiles_row_by_row_with_blank_padding():
    values = torch.arange(1, 6) / 5
    gray = plots.image_grid(values[:, None].expand(5, 6), (1, 2, 3), ncols=2)  # five 2x3 tiles, all one value
    assert gray.shape == (3 * 3 + 1, 2 * 4 + 1)  # 3 rows, 2 columns, 1 pixel between and around
    for k, value in enumerate(values):
        row, column = divmod(k, 2)
        assert torch.all(gray[1 + 3 * row:3 + 3 * row, 1 + 4 * column:4 + 4 * column] == value), k
    assert gray.sum() == pytest.approx(6 * values.sum())  # the padding and the sixth place are blank
    rgb = torch.tensor([0.1, 0.5, 0.9]).repeat_interleave(4)  # a 2x2 image: red, green and blue planes
    colour = plots.image_grid(torch.stack([rgb, rgb]), (3, 2, 2), ncols=2)
    assert colour.shape == (4, 7, 3) and torch.allclose(colour[1, 1], torch.tensor([0.1, 0.5, 0.9]))


def curves(weights):
    """Rows of metrics.jsonl for epochs 1, 2, ... with these KL weights."""
    return [{"epoch": epoch, "train_loss": 100.0 - epoch, "val_neg_elbo": 101.0 - epoch, "recon": 90.0 - epoch,
             "kl": 10.0, "kl_weight": weight} for epoch, weight in enumerate(weights, 1)]


@pytest.mark.parametrize("weights,drawn", [((1.0, 1.0, 1.0), False), ((0.0, 0.5, 1.0), True),
                                           ((4.0, 4.0, 4.0), True)])
def test_training_curves_draw_the_kl_weight_unless_it_stayed_1(weights, drawn):
    fig = plots.training_curves_figure(curves(weights))
    assert ("KL weight" in [ax.get_ylabel() for ax in fig.axes]) == drawn
    assert len(fig.axes) == (3 if drawn else 2)


def test_training_curves_tick_whole_epochs():
    fig = plots.training_curves_figure(curves((1.0, 1.0, 1.0)))
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks == [1, 2, 3]


def test_pictures_neither_switch_the_backend_nor_use_pyplot(tmp_path):
    code = ("import sys, matplotlib; matplotlib.use('svg'); from pyrovae.report import plots; "
            "rows = [{'epoch': 1, 'train_loss': 2.0, 'val_neg_elbo': 2.5}]; "
            f"plots.save(plots.training_curves_figure(rows), {str(tmp_path / 'curves.png')!r}); "
            "assert 'matplotlib.pyplot' not in sys.modules; assert matplotlib.get_backend() == 'svg'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_manifold_of_a_2d_model_varies_along_rows_and_columns(digits, tmp_path):
    vae, _ = trained(digits, epochs=5)
    z = plots.manifold_latents(vae, n=20)
    assert z.shape == (400, 2)
    assert torch.equal(z[:20, 1], torch.full((20,), 2.0)) and torch.equal(z[-20:, 1], torch.full((20,), -2.0))
    images = vae.decode(z).detach().reshape(20, 20, -1)
    along_row = (images[:, 1:] - images[:, :-1]).abs().mean()
    along_column = (images[1:] - images[:-1]).abs().mean()
    assert along_row > 1e-3 and along_column > 1e-3
    assert (images[:, 0] - images[:, -1]).abs().mean() > 0.05  # the ends of a row are different images
    pixels = png_pixels(plots.save(plots.manifold_figure(vae, digits.image_shape), tmp_path / "manifold.png"))
    top, bottom = np.array_split(pixels[..., 0], 2)
    assert np.abs(top[: len(bottom)].mean(1) - bottom[: len(top)].mean(1)).max() > 0.01


def test_manifold_strip_quantiles_and_principal_directions(digits):
    one_d = build_vae(ModelConfig(image_shape=digits.image_shape, z_dim=1))
    assert plots.manifold_latents(one_d, n=7).shape == (7, 1)
    quantiles = plots.manifold_grid(5, quantiles=True)
    assert torch.allclose(torch.distributions.Normal(0, 1).cdf(quantiles), torch.linspace(0.05, 0.95, 5))
    many = build_vae(ModelConfig(image_shape=digits.image_shape, z_dim=6))
    with pytest.raises(ValueError, match="principal directions"):
        plots.manifold_latents(many)
    z = plots.manifold_latents(many, digits.test.x, n=5)
    center, directions, std = principal_directions(encoder_means(many, digits.test.x))
    assert z.shape == (25, 6)
    assert torch.allclose(z.mean(0), center, atol=1e-5)  # the grid is symmetric about the mean
    assert torch.allclose((z - center) @ directions[0], (plots.manifold_grid(5) * std[0]).repeat(5), atol=1e-4)


def test_principal_directions_find_the_axis_of_largest_variance():
    means = torch.randn(2000, 3) * torch.tensor([0.1, 3.0, 1.0])
    _, directions, std = principal_directions(means)
    assert directions[0].abs().argmax() == 1 and directions[1].abs().argmax() == 2
    assert std[0] == pytest.approx(3.0, rel=0.1) and std[1] == pytest.approx(1.0, rel=0.1)


def test_kl_per_dimension_sums_to_the_closed_form_kl_for_a_gaussian_prior(small_vae, binary_batch):
    loc, scale = small_vae.encode(binary_batch)
    per_dim = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log())
    assert torch.allclose(kl_per_dimension(small_vae, binary_batch), per_dim.mean(0), atol=1e-5)


def test_kl_per_dimension_of_a_one_component_mixture_matches_its_gaussian(binary_batch):
    mixture = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=3, hidden=(8,), prior="mixture",
                                    prior_components=1))
    loc, scale = mixture.encode(binary_batch)
    m, s = mixture.prior.locs[0], torch.nn.functional.softplus(mixture.prior.raw_scales[0])
    exact = (torch.log(s / scale) + (scale**2 + (loc - m) ** 2) / (2 * s**2) - 0.5).mean(0)
    estimate = kl_per_dimension(mixture, binary_batch, num_samples=20000)
    assert torch.allclose(estimate, exact.detach(), atol=0.03)


def test_a_unit_the_encoder_ignores_is_inactive(small_vae, binary_batch):
    last_layer = small_vae.encoder.net[-1]  # rows 0..Z-1 give loc
    with torch.no_grad():
        last_layer.weight[1] = 0.0
        last_layer.weight[[0, 2]] *= 20  # a random init barely moves the means; make units 0 and 2 vary
    means = small_vae.encode(torch.bernoulli(torch.full((200, 16), 0.5)))[0].detach()
    active = active_units(means)
    assert not active[1] and active[0] and active[2]


def test_conditional_model_draws_one_row_per_class(digits, tmp_path):
    vae, history = trained(digits, z_dim=4, epochs=1, prior="class-means", num_classes=10)
    paths = plots.save_run_pictures(vae, digits.test, digits.image_shape, tmp_path, metrics=history,
                                    only=["class_samples"])
    assert [p.name for p in paths] == ["class_samples.png"]
    assert png_pixels(paths[0]).shape[0] > png_pixels(paths[0]).shape[1] * 0.8  # ten rows of ten


def test_figures_are_returned_for_notebooks(digits):
    vae, history = trained(digits, epochs=1)
    curves_figure = plots.training_curves_figure(history)
    assert isinstance(curves_figure, Figure)
    assert curves_figure._repr_png_().startswith(b"\x89PNG")  # what IPython shows
    assert isinstance(plots.latent_scatter_figure(vae, digits.test, tsne=False), Figure)
    with pytest.raises(ValueError, match="no test image of class 11"):
        plots.interpolation_figure(vae, digits.test, digits.image_shape, classes=(3, 11))
    with pytest.raises(ValueError, match="prior='class-means'"):
        plots.class_samples_figure(vae, digits.image_shape)


def test_plot_command_draws_only_what_is_asked(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--z-dim", "3", "--out", str(out), "--no-progress"]) == 0
    assert image_pictures() <= {p.name for p in out.iterdir()}
    assert len(RunDir(out).read_metrics()) == 2
    for picture in out.glob("*.png"):
        picture.unlink()
    assert main(["plot", str(out), "--only", "manifold", "latent_scatter", "--tsne", "--quantiles",
                 "--interpolate", "1", "7"]) == 0
    assert {p.name for p in out.glob("*.png")} == {"manifold.png", "latent_scatter.png"}
    assert main(["plot", str(out), "--only", "kl_per_dim", "--out", str(tmp_path / "new" / "folder")]) == 0
    assert (tmp_path / "new" / "folder" / "kl_per_dim.png").exists()  # the folder, and its parent, made
    assert main(["plot", str(out), "--only", "class_samples"]) == 2
    assert "not conditional" in capsys.readouterr().err


def test_the_default_interpolation_shows_a_visible_morph_on_the_digits(digits):
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(image_shape=digits.image_shape))  # the CLI's model, trained a quarter as long
    fit(vae, digits, TrainConfig(epochs=25, seed=0), progress=False)
    grid = plots.interpolation_figure(vae, digits.test, digits.image_shape).axes[0].images[0].get_array()
    first, last = (np.asarray(grid[1:9, 1 + 9 * k:9 + 9 * k]) for k in (1, 10))  # the first and last decoded steps
    assert np.abs(first - last).mean() > 0.14


def test_kl_per_dim_of_a_huge_latent_draws_a_bounded_figure_of_the_top_dimensions(binary_batch):
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=20000, hidden=(8,)))
    fig = plots.kl_per_dim_figure(vae, Split.from_arrays(binary_batch))
    assert fig.get_size_inches()[0] <= 20 and len(fig.axes[0].patches) == plots.MAX_BARS
    assert "of 20000 units active" in fig.axes[0].get_title()
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == sorted(heights, reverse=True)


def test_a_single_epoch_gets_whole_epoch_ticks():
    ax = plots.training_curves_figure(curves((1.0,))).axes[0]
    low, high = ax.get_xlim()
    assert [t for t in ax.get_xticks() if low <= t <= high] == [1]


def test_iwae_parts_are_not_drawn_as_the_parts_of_its_loss():
    titles = {elbo: plots.training_curves_figure(curves((1.0, 1.0)), elbo).axes[1].get_title() for elbo in
              ("trace", "meanfield", "iwae")}
    assert "IWAE" not in titles["trace"] + titles["meanfield"] and "not the IWAE loss" in titles["iwae"]


@pytest.fixture
def gaps(digits):
    """A 13-class conditional model, and 20 test images of classes 0 and 12 only."""
    vae = build_vae(ModelConfig(image_shape=digits.image_shape, z_dim=2, hidden=(16,), prior="class-means",
                                num_classes=13))
    return vae, Split(digits.test.x[:20], torch.tensor([0, 12] * 10))


def test_class_samples_of_labels_with_gaps_draw_a_row_per_present_class(digits, gaps):
    vae, test = gaps
    grid = plots.run_figures(vae, test, digits.image_shape, [])["class_samples"]().axes[0].images[0].get_array()
    assert grid.shape[0] == 2 * 9 + 1  # two rows of 8x8 images, padded


def test_latent_scatter_of_one_label_draws_no_label_colour_bar(gaps):
    vae, test = gaps
    assert len(plots.latent_scatter_figure(vae, Split.from_arrays(test.x)).axes) == 1  # no labels: all 0
    assert len(plots.latent_scatter_figure(vae, test).axes) == 2  # the scatter and its label bar


def test_plot_command_labels_the_curves_for_the_runs_objective(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "--elbo", "iwae", "--particles", "2", "--epochs", "1", "--hidden", "16", "--z-dim", "2",
                 "--threads", "1", "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    drawn = []
    monkeypatch.setattr(plots, "training_curves_figure", lambda *args: drawn.append(args) or Figure())
    assert main(["plot", str(out), "--only", "training_curves"]) == 0
    assert drawn[0][1] == "iwae"


def test_interpolation_does_not_apply_to_a_test_split_of_one_image(small_vae):
    one, two = (Split(torch.rand(n, 16), torch.ones(n, dtype=torch.long)) for n in (1, 2))
    assert "one image" in plots.unavailable_pictures(small_vae, one, [], (1, 4, 4))["interpolation"]
    assert "interpolation" not in plots.unavailable_pictures(small_vae, two, [], (1, 4, 4))
