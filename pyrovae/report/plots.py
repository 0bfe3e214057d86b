"""Pictures of a trained VAE as matplotlib Figures, from seeded draws; :func:`save_run_pictures` writes them.

The image grids are also :class:`Tiles` of their own, for pictures of your own and for TensorBoard. A table run
gets the pictures of :mod:`pyrovae.report.table_plots` in place of the image pictures.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pyrovae.data.datasets import Split, as_floats
from pyrovae.files import write_atomically
from pyrovae.model.two_layer import TwoLayerVAE
from pyrovae.model.vae import VAE
from pyrovae.randomness import seeded
from pyrovae.report.figures import NotebookFigure, png
from pyrovae.report.latents import (
    ACTIVE_UNIT_THRESHOLD,
    active_units,
    encoder_means,
    kl_per_dimension,
    latent_plane,
    principal_directions,
)
from pyrovae.report.table_plots import (
    color_column,
    correlations_figure,
    learned_schema,
    marginals_figure,
    missingness_figure,
    table_latent_scatter_figure,
)

log = logging.getLogger(__name__)

PICTURES = ("samples", "reconstructions", "training_curves", "latent_scatter", "manifold", "interpolation",
            "kl_per_dim", "class_samples", "marginals", "correlations", "missingness")
"""The pictures a run directory can have, each written as ``<name>.png``: those that apply to its data."""
TABLE_PICTURES = ("marginals", "correlations", "missingness")
"""The pictures of a table run drawn in place of :data:`IMAGE_PICTURES` (see :mod:`pyrovae.report.table_plots`)."""
IMAGE_PICTURES = ("samples", "reconstructions", "manifold", "interpolation", "class_samples")
"""The pictures that draw decoded images, which rows of a table are not."""
TABLE = "the data are rows of a table, not images"
IMAGES = "the data are images, not rows of a table"
NO_SCHEMA = "the model is not a table model with a schema (fit one on a .csv or .parquet table, or a DataFrame)"
MAX_GRID_IMAGES = 1024
"""Most images one sample grid shows (32 x 32); more would make an unreadable, memory-hungry picture."""
MAX_BARS = 64
"""Most latent dimensions kl_per_dim.png draws: past it, those of the largest KL."""


def image_grid(images: torch.Tensor, image_shape: Sequence[int], ncols: int, pad: int = 1) -> torch.Tensor:
    """Tile ``(N, D)`` flattened images, ``ncols`` to a row, into one ``(H', W')`` gray or ``(H', W', C)``
    colour array; other channel counts than 1, 3 (RGB) and 4 (RGBA) are shown as their gray mean.
    """
    from torchvision.utils import make_grid  # a second to import: only pictures need it

    images = images.detach().cpu().reshape(-1, *image_shape)
    if image_shape[0] not in (1, 3, 4):
        images = images.mean(1, keepdim=True)
    grid = make_grid(images, nrow=ncols, padding=pad)
    return grid[0] if images.shape[1] == 1 else grid.permute(1, 2, 0)  # make_grid repeats one channel thrice


@dataclass
class Tiles:
    """Flattened images ``(N, D)`` to show ``ncols`` to a row, under a title."""

    images: torch.Tensor
    ncols: int
    title: str

    def grid(self, image_shape: Sequence[int]) -> torch.Tensor:
        """The tiled picture as an array (see :func:`image_grid`)."""
        return image_grid(self.images, image_shape, self.ncols)


def _grid_figure(tiles: Tiles, image_shape: Sequence[int]) -> Figure:
    grid = tiles.grid(image_shape)
    width = min(tiles.ncols, len(tiles.images)) * 0.6 + 0.4
    fig = NotebookFigure(figsize=(width, grid.shape[0] / grid.shape[1] * (width - 0.4) + 0.6), layout="tight")
    ax = fig.subplots()
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(tiles.title)
    ax.axis("off")
    return fig


def sample_labels(vae: VAE, n: int, label: int | None = None) -> torch.Tensor | None:
    """Labels for ``n`` samples: ``label`` throughout, the classes in turn, or none (unconditional model)."""
    if not vae.conditional:
        return None
    if label is not None:
        return torch.full((n,), label, dtype=torch.long, device=vae.device)
    return torch.arange(n, device=vae.device) % vae.num_classes


@torch.no_grad()
def sample_tiles(vae: VAE, n: int = 64, seed: int = 0, label: int | None = None) -> Tiles:
    """E[x|z] for ``n`` draws z ~ p(z) (p(z|y) of class ``label``, or one class per column), from ``seed``."""
    if not 1 <= n <= MAX_GRID_IMAGES:
        raise ValueError(f"a sample grid shows 1 to {MAX_GRID_IMAGES} images, not {n}; save more samples as an "
                         f"array (vae.sample(n), or pyrovae sample --out FILE.npy)")
    vae.eval()
    y = sample_labels(vae, n, label)
    with seeded(vae.device, seed):
        images = vae.sample(n, y)
    if y is None or label is not None:
        title = "decoded prior samples" if y is None else f"decoded samples of class {label}"
        return Tiles(images, ncols=max(8, math.ceil(math.sqrt(n))), title=title)
    return Tiles(images, ncols=vae.num_classes, title="decoded samples, one class per column")


def samples_figure(vae: VAE, image_shape: Sequence[int], n: int = 64, seed: int = 0,
                   label: int | None = None) -> Figure:
    """A grid of E[x|z] for ``n`` draws z ~ p(z) (see :func:`sample_tiles`)."""
    return _grid_figure(sample_tiles(vae, n, seed, label), image_shape)


@torch.no_grad()
def reconstruction_tiles(vae: VAE, x: torch.Tensor, n: int = 8, y: torch.Tensor | None = None) -> Tiles:
    """The first ``n`` images of ``x`` (top row) above their reconstructions E[x | z = loc(x)] (bottom row); a decoder
    conditioned on labels needs ``y`` unless the VAE guesses them with its classifier."""
    vae.eval()
    x = x[:n]
    images = torch.cat([x, vae.reconstruct(x, None if y is None else y[:n])])
    return Tiles(images, ncols=len(x), title="originals (top), reconstructions (bottom)")


def reconstructions_figure(vae: VAE, x: torch.Tensor, image_shape: Sequence[int], n: int = 8,
                           y: torch.Tensor | None = None) -> Figure:
    """Originals (top row) above their reconstructions (see :func:`reconstruction_tiles`)."""
    return _grid_figure(reconstruction_tiles(vae, x, n, y), image_shape)


@torch.no_grad()
def class_samples_figure(vae: VAE, image_shape: Sequence[int], per_class: int = 10, seed: int = 0,
                         classes: Sequence[int] | None = None) -> Figure:
    """A conditional model's samples from p(z|y), one row per class y (of ``classes``, default all), as Su Jianlin
    (2018) draws a chosen digit."""
    if not vae.conditional:
        raise ValueError("class samples need a conditional model (prior='class-means', or decoder_conditioning=True)")
    vae.eval()
    classes = sorted(range(vae.num_classes) if classes is None else classes)
    y = torch.tensor(classes, device=vae.device).repeat_interleave(per_class)
    with seeded(vae.device, seed):
        images = vae.sample(len(y), y)
    rows = f"{classes[0]} on top" if len(classes) == vae.num_classes else f"classes {', '.join(map(str, classes))}"
    return _grid_figure(Tiles(images, ncols=per_class, title=f"decoded samples, one class per row ({rows})"),
                        image_shape)


def training_curves_figure(metrics: Sequence[dict[str, Any]], elbo: str = "trace") -> Figure:
    """Train loss and validation -ELBO per epoch; beside them, if ``metrics`` (rows of ``metrics.jsonl``) has them, the
    reconstruction and KL parts (IWAE: particle averages, not the loss's parts) and a KL weight other than 1."""
    if not metrics:
        raise ValueError("no metrics to plot: metrics.jsonl is empty (train for at least one epoch)")
    epochs = [row["epoch"] for row in metrics]
    has_parts = all("recon" in row and "kl" in row for row in metrics)
    fig = NotebookFigure(figsize=(10 if has_parts else 5.5, 4), layout="tight")
    axes = fig.subplots(1, 2 if has_parts else 1, squeeze=False)[0]
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole
    loss_ax = axes[0]
    loss_ax.plot(epochs, [row["train_loss"] for row in metrics], marker=".", label="train loss")
    loss_ax.plot(epochs, [row["val_neg_elbo"] for row in metrics], marker=".", label="validation -ELBO")
    loss_ax.set(xlabel="epoch", ylabel="nats per example", title="objective")
    loss_ax.legend()
    if has_parts:
        parts_ax = axes[1]
        parts_ax.plot(epochs, [row["recon"] for row in metrics], marker=".", label="reconstruction -log p(x|z)")
        parts_ax.plot(epochs, [row["kl"] for row in metrics], marker=".", label="KL(q(z|x) || p(z))")
        parts_ax.set(xlabel="epoch", ylabel="nats per example", title="ELBO parts (training)" if elbo != "iwae"
                     else "ELBO parts, particle averages: not the IWAE loss")
        handles, labels = parts_ax.get_legend_handles_labels()
        weights = [row.get("kl_weight") for row in metrics]
        if None not in weights and set(weights) != {1.0}:  # a warm-up, a balance, or a constant other than 1
            weight_ax = parts_ax.twinx()
            weight_ax.plot(epochs, weights, color="gray", linestyle="--", label="KL weight")
            weight_ax.set_ylabel("KL weight")
            more_handles, more_labels = weight_ax.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        parts_ax.legend(handles, labels)
    return fig


def _labelled_scatter(ax: Any, xs: torch.Tensor, ys: torch.Tensor, labels: torch.Tensor | None) -> None:
    if labels is None or len(labels.unique()) < 2:  # no labels to tell apart
        ax.scatter(xs, ys, s=4, alpha=0.5)
        return
    points = ax.scatter(xs, ys, c=labels, cmap="tab10", s=4 if len(xs) > 2000 else 10, alpha=0.6,
                        vmin=-0.5, vmax=9.5)
    ax.figure.colorbar(points, ax=ax, label="label", ticks=sorted(set(labels.tolist())))


@torch.no_grad()
def latent_scatter_figure(vae: VAE, test: Split, tsne: bool = False, seed: int = 0) -> Figure:
    """The encoder means E_q[z|x] of ``test`` coloured by label (Canziani & LeCun's NYU lecture, fig. 8): directly
    for 1D and 2D latents, else on the two principal directions, or embedded by t-SNE."""
    vae.eval()
    labels = None if test.y is None else test.y.cpu()
    points, axes = latent_plane(vae, as_floats(test.x), labels, "label", tsne, seed)
    fig = NotebookFigure(figsize=(6, 5), layout="tight")
    ax = fig.subplots()
    _labelled_scatter(ax, points[:, 0], points[:, 1], None if labels is None else labels[:len(points)])
    ax.set(**axes)
    return fig


def manifold_grid(n: int = 20, span: float = 2.0, quantiles: bool = False) -> torch.Tensor:
    """``n`` coordinates: evenly over [-span, span], or the normal quantiles of (0.05 ... 0.95)."""
    if quantiles:
        return torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n))
    return torch.linspace(-span, span, n)


@torch.no_grad()
def manifold_latents(vae: VAE, x: torch.Tensor | None = None, n: int = 20, span: float = 2.0,
                     quantiles: bool = False) -> torch.Tensor:
    """The latents the manifold decodes, row by row: ``(n, Z)`` for 1D; 2D an ``n x n`` grid, ``z1`` left to right,
    ``z2`` bottom to top; more: that grid over the principal directions of the encoder means of ``x``, in their std.
    """
    coords = manifold_grid(n, span, quantiles).to(vae.device)
    if vae.z_dim == 1:
        return coords[:, None]
    z2, z1 = torch.meshgrid(coords.flip(0), coords, indexing="ij")  # top row: largest z2
    grid = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1)
    if vae.z_dim == 2:
        return grid
    if x is None:
        raise ValueError(f"a {vae.z_dim}D model's manifold runs over the principal directions of its "
                         f"encoder means: pass images x")
    center, directions, std = principal_directions(encoder_means(vae, x))
    return center + (grid * std) @ directions


@torch.no_grad()
def manifold_tiles(vae: VAE, x: torch.Tensor | None = None, n: int = 20, span: float = 2.0, quantiles: bool = False,
                   label: int = 0) -> Tiles:
    """The decoded grid of :func:`manifold_latents`, ``n`` to a row; a decoder conditioned on labels draws class
    ``label``."""
    vae.eval()
    z = manifold_latents(vae, x, n, span, quantiles)
    y = torch.full((len(z),), label, dtype=torch.long, device=vae.device) if vae.decoder_conditioning else None
    what = {1: "z from left to right", 2: "z1 left to right, z2 bottom to top"}.get(
        vae.z_dim, "the two principal directions of the encoder means (in std)")
    scale = "normal quantiles" if quantiles else f"[-{span:g}, {span:g}]"
    if isinstance(vae, TwoLayerVAE):
        scale = f"mean of p(z1|z2), z2 over {scale}"
    return Tiles(vae.decode(z, y), ncols=n, title=f"decoded {scale}: {what}")


def manifold_figure(vae: VAE, image_shape: Sequence[int], x: torch.Tensor | None = None, n: int = 20,
                    span: float = 2.0, quantiles: bool = False, label: int = 0) -> Figure:
    """Decode a grid of latents (:func:`manifold_latents`), as Verduzco (2023) maps a 1D or 2D latent space."""
    return _grid_figure(manifold_tiles(vae, x, n, span, quantiles, label), image_shape)


@torch.no_grad()
def interpolation_figure(vae: VAE, test: Split, image_shape: Sequence[int], classes: tuple[int, int] | None = None,
                         steps: int = 10) -> Figure:
    """Decode the latent line between the encoder means of the first test images of two classes.

    A decoder conditioned on labels keeps the first class. Without ``classes``: 0 and 1, unlike in shape, where the
    split has them, else its first and last class.
    """
    present = sorted(set(test.y.tolist()))
    if classes is None:
        classes = (0, 1) if {0, 1} <= set(present) else (present[0], present[-1])
    ends = []
    for label in classes:
        where = (test.y == label).nonzero()[:, 0]
        nth = len(ends) if classes[0] == classes[1] else 0  # from one class: its first two images
        if len(where) <= nth:
            raise ValueError(f"no test image of class {label} to interpolate from; choose among {present}")
        ends.append(as_floats(test.x[where[nth]]))
    vae.eval()
    loc = vae.encode(torch.stack(ends).to(vae.device))[0]
    t = torch.linspace(0, 1, steps, device=vae.device)[:, None]
    z = (1 - t) * loc[0] + t * loc[1]
    y = torch.full((steps,), classes[0], dtype=torch.long, device=vae.device) if vae.decoder_conditioning else None
    images = torch.cat([ends[0][None].to(vae.device), vae.decode(z, y), ends[1][None].to(vae.device)])
    of_z2 = " of z2 (mean of p(z1|z2))" if isinstance(vae, TwoLayerVAE) else ""
    return _grid_figure(Tiles(images, ncols=steps + 2, title=f"class {classes[0]} to class {classes[1]}: original, "
                                                           f"{steps} decoded steps{of_z2}, original"), image_shape)


@torch.no_grad()
def kl_per_dim_figure(vae: VAE, test: Split, seed: int = 0) -> Figure:
    """KL(q(z_i|x) || p(z_i)) per latent dimension with the active units marked: collapse made visible."""
    vae.eval()
    x = as_floats(test.x.to(vae.device))
    y = test.y.to(vae.device) if vae.conditional else None
    with seeded(vae.device, seed):
        kl = kl_per_dimension(vae, x, y).cpu()
    active = active_units(encoder_means(vae, x)).cpu()
    shown = torch.arange(vae.z_dim) if vae.z_dim <= MAX_BARS else kl.argsort(descending=True)[:MAX_BARS]
    fig = NotebookFigure(figsize=(max(5.0, 0.25 * len(shown) + 2), 3.5), layout="tight")
    ax = fig.subplots()
    ax.bar(range(len(shown)), kl[shown].numpy(), color=["tab:blue" if a else "lightgray" for a in active[shown]])
    ax.set(xlabel="latent dimension" if len(shown) == vae.z_dim else f"the {MAX_BARS} dimensions of largest KL",
           ylabel="KL, nats per example",
           title=f"{int(active.sum())} of {vae.z_dim} units active (blue: Cov_x E_q[z_i] > {ACTIVE_UNIT_THRESHOLD})")
    return fig


@dataclass
class PictureOptions:
    """Choices for the pictures of a run (``pyrovae plot`` flags)."""

    tsne: bool = False
    """latent_scatter by t-SNE instead of PCA for latents of more than two dimensions."""
    quantiles: bool = False
    """manifold over normal quantiles instead of an even grid over [-2, 2]."""
    interpolate: tuple[int, int] | None = None
    """the classes at the two ends of interpolation (default: see :func:`interpolation_figure`)."""
    seed: int = 0
    """seed of every random draw in the pictures."""
    elbo: str = "trace"
    """the run's objective (``TrainConfig.elbo``): under ``iwae`` the loss is not the sum of its plotted parts."""
    color_by: str | None = None
    """the categorical or binary column that colours a table's latent_scatter (default: the first categorical
    column, else the first binary one; see :func:`~pyrovae.report.table_plots.color_column`)."""


def run_figures(vae: VAE, test: Split, image_shape: Sequence[int], metrics: Sequence[dict[str, Any]],
                options: PictureOptions | None = None) -> dict[str, Callable[[], Figure]]:
    """The pictures that apply to this run, by name, each drawn when called."""
    o = options or PictureOptions()
    test, schema = test.to(vae.device), learned_schema(vae)
    figures: dict[str, Callable[[], Figure]] = {
        "samples": lambda: samples_figure(vae, image_shape, seed=o.seed),
        "reconstructions": lambda: reconstructions_figure(  # a classifier's own labels (clusters) for its VAE
            vae, as_floats(test.x), image_shape, y=None if vae.classifier is not None else test.y),
        "training_curves": lambda: training_curves_figure(metrics, o.elbo),
        "latent_scatter": lambda: latent_scatter_figure(vae, test, tsne=o.tsne, seed=o.seed),
        "manifold": lambda: manifold_figure(vae, image_shape, as_floats(test.x), quantiles=o.quantiles),
        "interpolation": lambda: interpolation_figure(vae, test, image_shape, o.interpolate),
        "kl_per_dim": lambda: kl_per_dim_figure(vae, test, seed=o.seed),
        "class_samples": lambda: class_samples_figure(  # the classes of the data (labels may have gaps)
            vae, image_shape, seed=o.seed, classes=None if test.y is None else test.y.unique().tolist()),
        "marginals": lambda: marginals_figure(vae, test, seed=o.seed),
        "correlations": lambda: correlations_figure(vae, test, seed=o.seed),
        "missingness": lambda: missingness_figure(test, schema),
    }
    if schema is not None:  # a table's rows have no labels: its scatter is coloured by a column
        figures["latent_scatter"] = lambda: table_latent_scatter_figure(vae, test, o.color_by, o.tsne, o.seed)
    for name in unavailable_pictures(vae, test, metrics, image_shape):
        del figures[name]
    return figures


def is_table(image_shape: Sequence[int]) -> bool:
    """Whether the data are rows of a table, shape (1, 1, D), rather than images."""
    return tuple(image_shape[:2]) == (1, 1)


def unavailable_pictures(vae: VAE, test: Split, metrics: Sequence[dict[str, Any]],
                         image_shape: Sequence[int] = (1, 28, 28)) -> dict[str, str]:
    """The pictures that do not apply to this run, each with the reason."""
    reasons = {"training_curves": (not metrics, "metrics.jsonl has no epochs yet"),
               "interpolation": (test.y is None or len(test) < 2, "the test split has no labels or one image"),
               "class_samples": (not vae.conditional,
                                 "the model is not conditional (prior='class-means', or decoder_conditioning=True)")}
    unavailable = {name: reason for name, (missing, reason) in reasons.items() if missing}
    if is_table(image_shape):
        unavailable |= {name: TABLE for name in IMAGE_PICTURES if name not in unavailable}
    if learned_schema(vae) is None:
        unavailable |= {name: NO_SCHEMA if is_table(image_shape) else IMAGES for name in TABLE_PICTURES}
    return unavailable


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG, whole or not at all (:func:`~pyrovae.files.write_atomically`)."""
    write_atomically(path, png(fig))
    return Path(path)


def save_run_pictures(vae: VAE, test: Split, image_shape: Sequence[int], folder: str | Path,
                      metrics: Sequence[dict[str, Any]] = (), only: Sequence[str] | None = None,
                      options: PictureOptions | None = None) -> list[Path]:
    """Write the run's pictures (all that apply, or those named in ``only``) as ``<name>.png`` in ``folder``."""
    unavailable = unavailable_pictures(vae, test, metrics, image_shape)
    for name in only or ():
        if name not in PICTURES:
            raise ValueError(f"unknown picture {name!r}; choose from {', '.join(PICTURES)}")
        if name in unavailable:
            raise ValueError(f"{name} does not apply to this run ({unavailable[name]})")
    if options is not None:
        color_column(learned_schema(vae), options.color_by)  # a wrong column refused before any picture is drawn
    for name in PICTURES:
        if unavailable.get(name) == TABLE and (only is None or name in only):
            log.warning(f"{name}.png skipped: {TABLE}")
    figures = run_figures(vae, test, image_shape, metrics, options)
    names = [name for name in figures if only is None or name in only]
    return [save(figures[name](), Path(folder) / f"{name}.png") for name in names]
