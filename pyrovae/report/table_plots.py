"""Pictures of a table run, drawn in place of the image pictures: the test rows against rows drawn from the model
(each column's distribution, the correlations between columns), which cells of the test rows are missing, and the
latent scatter coloured by a column.

The model's rows are drawn from a seed, as many as the test rows, so that the two are compared at equal size. Like
:mod:`pyrovae.report.plots`, this returns :class:`~pyrovae.report.figures.NotebookFigure` objects, without pyplot.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pyrovae.data.datasets import Split
from pyrovae.data.tables import Column, TableSchema
from pyrovae.model.tables import TableVAE
from pyrovae.model.vae import VAE
from pyrovae.randomness import seeded
from pyrovae.report.figures import NotebookFigure
from pyrovae.report.latents import latent_plane

MAX_COLUMNS = 30
"""Most columns the marginals and correlations draw, and the missingness names: the first ones; titles say so."""
MAX_ROWS = 500
"""Most test rows the missingness pattern draws: the first ones."""
LEVEL_COLOURS = [colour for i, colour in enumerate(colormaps["tab20"].colors[::2] + colormaps["tab20"].colors[1::2])
                 if i % 10 != 7]
"""The colours of the levels in the latent scatter: tab10's, then their light partners, without the greys, which
mark the missing cells."""
PANELS_PER_ROW = 5
SOURCES = (("test rows", "tab:blue"), ("model", "tab:orange"))
"""The label and colour of the test rows and of the rows drawn from the model, in that order."""


def learned_schema(vae: VAE) -> TableSchema | None:
    """The table a table model learned (``TableVAE.schema``, which fit and load_run set); None for other models."""
    return vae.schema if isinstance(vae, TableVAE) else None


def _schema(vae: VAE) -> TableSchema:
    schema = learned_schema(vae)
    if schema is None:
        raise ValueError("the pictures of a table need a table model with its schema (vae.schema, which fit on a "
                         "table and load_run set)")
    return schema


@torch.no_grad()
def _test_and_model_rows(vae: TableVAE, test: Split, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The encoded test rows (NaN where missing) and as many complete rows drawn from the model from ``seed``."""
    vae.eval()
    with seeded(vae.device, seed):
        drawn = vae.sample_rows(len(test))
    return test.x.cpu().numpy(), drawn.cpu().numpy()


def _observed(column: Column, cells: np.ndarray) -> np.ndarray:
    """The observed (finite) cells of one encoded column, in the table's units; a level stays its index."""
    cells = cells[np.isfinite(cells)]
    return cells if column.levels is not None else column.decode(cells).to_numpy(float)


def _short(name: object, width: int = 14) -> str:
    """``name`` as text of at most ``width`` characters, elided in the middle, where long names tend to agree."""
    text = str(name)
    return text if len(text) <= width else text[:(width - 1) // 2] + "…" + text[-(width // 2):]


def _histograms(ax: Axes, column: Column, test: np.ndarray, model: np.ndarray) -> None:
    """Densities of a numeric column, overlaid over shared bins: a bin per whole number for counts of a short
    range, else 30 over the range of both."""
    both = np.concatenate([test, model])
    low, high = both.min(), both.max()
    whole = column.type == "count" and high - low < 30
    bins = np.arange(low - 0.5, high + 1.5) if whole else np.histogram_bin_edges(both, bins=30)
    for cells, (label, colour) in zip((test, model), SOURCES):
        if len(cells):
            ax.hist(cells, bins=bins, density=True, histtype="stepfilled", alpha=0.5, color=colour, label=label)


def _level_bars(ax: Axes, column: Column, test: np.ndarray, model: np.ndarray) -> None:
    """Each level's share of a binary or categorical column's observed cells, test and model bars side by side."""
    places = np.arange(len(column.levels))
    for shift, cells, (label, colour) in zip((-0.2, 0.2), (test, model), SOURCES):
        counts = np.bincount(cells.astype(int), minlength=len(column.levels))
        ax.bar(places + shift, counts / max(len(cells), 1), width=0.4, color=colour, label=label)
    ax.set_xticks(places, [_short(level, 10) for level in column.levels], rotation=90 if len(places) > 4 else 0)


def _first_columns(schema: TableSchema) -> tuple[list[Column], str]:
    """The columns a picture draws, the first :data:`MAX_COLUMNS`, and what its title says of the rest."""
    count = len(schema.columns)
    return schema.columns[:MAX_COLUMNS], f"; the first {MAX_COLUMNS} of {count} columns" if count > MAX_COLUMNS else ""


def marginals_figure(vae: TableVAE, test: Split, seed: int = 0) -> Figure:
    """Each column's distribution over the observed cells of the test rows against as many rows drawn from the
    model (from ``seed``): a panel per column, densities over shared bins for numbers, level shares for levels."""
    columns, rest = _first_columns(_schema(vae))
    test_rows, model_rows = _test_and_model_rows(vae, test, seed)
    across = min(len(columns), PANELS_PER_ROW)
    down = math.ceil(len(columns) / across)
    fig = NotebookFigure(figsize=(max(6.0, 2.8 * across), 2.4 * down + 0.6), layout="constrained")
    axes = fig.subplots(down, across, squeeze=False).ravel()
    for j, (ax, column) in enumerate(zip(axes, columns)):
        draw = _histograms if column.levels is None else _level_bars
        draw(ax, column, _observed(column, test_rows[:, j]), _observed(column, model_rows[:, j]))
        ax.set_title(f"{_short(column.name, 24)} ({column.type})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(columns):]:
        ax.remove()
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{len(test)} test rows (their observed cells) against {len(test)} rows drawn from the model{rest}")
    return fig


def correlations_figure(vae: TableVAE, test: Split, seed: int = 0) -> Figure:
    """The Pearson correlations between the columns of the test rows, each pair over the rows that observe both,
    beside those of as many rows drawn from the model (from ``seed``), on one scale [-1, 1]; a binary or
    categorical column counts as its level indices."""
    import pandas as pd

    columns, rest = _first_columns(_schema(vae))
    names = [column.name for column in columns]
    test_rows, model_rows = _test_and_model_rows(vae, test, seed)
    side = max(3.0, 0.22 * len(names) + 1.5)
    fig = NotebookFigure(figsize=(2 * side + 1.5, side + 1.0), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, rows, title in zip(axes, (test_rows, model_rows), ("test rows (pairwise complete)", "model rows")):
        matrix = pd.DataFrame(rows[:, :len(names)], columns=names).corr().to_numpy()
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xticks(range(len(names)), [_short(name) for name in names], rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), [_short(name) for name in names], fontsize=7)
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=axes, label="correlation", shrink=0.8)
    fig.suptitle(f"correlations between columns; binary and categorical ones as their level indices{rest}")
    return fig


def missingness_figure(test: Split, schema: TableSchema) -> Figure:
    """Which cells of the test rows are missing: a line per row (the first :data:`MAX_ROWS`) and a place per
    column, missing dark; below, each column's share of missing cells over all the test rows."""
    missing = test.x.isnan().cpu().numpy()
    names = schema.names
    fig = NotebookFigure(figsize=(max(6.0, 0.22 * len(names) + 1.5), 6.5), layout="constrained")
    pattern, shares = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    pattern.imshow(missing[:MAX_ROWS].astype(float), cmap="gray_r", vmin=0, vmax=1, aspect="auto")
    rows = f"the first {MAX_ROWS} of {len(test)}" if len(test) > MAX_ROWS else f"the {len(test)}"
    pattern.set(ylabel="test row", title=f"missing cells (dark) of {rows} test rows\n{missing.mean():.1%} of all "
                                         f"their cells are missing")
    shares.bar(range(len(names)), missing.mean(0), color="dimgray")
    shares.set(ylim=(0, 1), ylabel="share missing")
    if len(names) <= MAX_COLUMNS:
        shares.set_xticks(range(len(names)), [_short(name) for name in names], rotation=90, fontsize=7)
    else:
        shares.set_xlabel(f"column (of {len(names)})")
    return fig


def color_column(schema: TableSchema | None, color_by: str | None = None) -> int | None:
    """The index of the column that colours a table's latent scatter: ``color_by``, which must name a binary or
    categorical column; by default the first categorical column, else the first binary one, else none."""
    if schema is None:
        if color_by is None:
            return None
        raise ValueError(f"color_by={color_by!r} colours a table's latent scatter by one of its columns, and this "
                         f"model learned no table")
    leveled = {column.name: j for j, column in enumerate(schema.columns) if column.levels is not None}
    if color_by is None:
        return next((leveled[column.name] for kind in ("categorical", "binary") for column in schema.columns
                     if column.type == kind), None)
    if color_by not in leveled:
        what = (f"is a {schema.columns[schema.names.index(color_by)].type} column" if color_by in schema.names
                else "is not a column of the table")
        choices = ", ".join(map(repr, leveled)) or "none, the table has no binary or categorical column"
        raise ValueError(f"color_by={color_by!r} {what}; colour by a binary or categorical column: {choices}")
    return leveled[color_by]


def _level_scatter(ax: Axes, points: torch.Tensor, codes: torch.Tensor, column: Column, size: float) -> None:
    """Points coloured by their level (the first as many as :data:`LEVEL_COLOURS` apart, the rest black), grey where
    the cell is missing, with a legend of the level names beside the plot."""
    coloured = len(LEVEL_COLOURS)
    groups = [(codes.isnan(), "lightgray", "missing")]
    groups += [(codes == i, colour, _short(level, 20)) for i, (level, colour) in enumerate(zip(column.levels,
                                                                                                LEVEL_COLOURS))]
    groups += [(codes >= coloured, "black", f"{len(column.levels) - coloured} other levels")]
    for where, colour, label in groups:
        if where.any():
            ax.scatter(points[where, 0], points[where, 1], color=colour, s=size, alpha=0.6, label=label)
    ax.legend(title=_short(column.name, 24), markerscale=2, fontsize="small", loc="upper left",
              bbox_to_anchor=(1.02, 1.0))


@torch.no_grad()
def table_latent_scatter_figure(vae: TableVAE, test: Split, color_by: str | None = None, tsne: bool = False,
                                seed: int = 0) -> Figure:
    """The encoder means of the test rows, on the plane of :func:`~pyrovae.report.latents.latent_plane`, coloured
    by the levels of a binary or categorical column (:func:`color_column`), grey where its cell is missing."""
    schema = _schema(vae)
    j = color_column(schema, color_by)
    vae.eval()
    codes = None if j is None else test.x[:, j].cpu()
    heights = None if codes is None else codes.nan_to_num(-1.0)  # a 1D latent: missing cells below the levels
    points, axes = latent_plane(vae, test.x, heights, "" if j is None else schema.columns[j].name, tsne, seed)
    fig = NotebookFigure(figsize=(6 if codes is None else 8, 5), layout="tight")
    ax = fig.subplots()
    size = 4 if len(points) > 2000 else 10
    if codes is None:
        ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.5)
    else:
        _level_scatter(ax, points, codes[:len(points)], schema.columns[j], size)
    ax.set(**axes)
    return fig
