"""Pictures of a trained VAE as matplotlib Figures (non-interactive backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pyrovae.data import Split  # noqa: E402
from pyrovae.vae import VAE  # noqa: E402


def image_grid(images: torch.Tensor, image_shape: Sequence[int], ncols: int, pad: int = 1) -> torch.Tensor:
    """Tile ``(N, D)`` flattened images into one ``(H', W'[, C])`` array, ``pad`` blank pixels apart."""
    c, h, w = image_shape
    n = len(images)
    nrows = -(-n // ncols)
    tiles = torch.zeros(nrows * ncols, c, h + pad, w + pad)
    tiles[:n, :, pad:, pad:] = images.detach().cpu().reshape(n, c, h, w)
    grid = tiles.reshape(nrows, ncols, c, h + pad, w + pad).permute(0, 3, 1, 4, 2)
    grid = grid.reshape(nrows * (h + pad), ncols * (w + pad), c)[pad:, pad:]
    return grid[..., 0] if c == 1 else grid


def _grid_figure(images: torch.Tensor, image_shape: Sequence[int], ncols: int, title: str) -> Figure:
    grid = image_grid(images, image_shape, ncols)
    fig, ax = plt.subplots(figsize=(ncols * 0.6 + 0.4, grid.shape[0] / grid.shape[1] * ncols * 0.6 + 0.6))
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    return fig


def sample_labels(vae: VAE, n: int, label: int | None = None) -> torch.Tensor | None:
    """Labels for ``n`` samples: ``label`` throughout, the classes in turn, or none (unconditional model)."""
    if not vae.conditional:
        return None
    if label is not None:
        return torch.full((n,), label, dtype=torch.long, device=vae.device)
    return torch.arange(n, device=vae.device) % vae.num_classes


@torch.no_grad()
def samples_figure(vae: VAE, image_shape: Sequence[int], n: int = 64, seed: int = 0,
                   label: int | None = None) -> Figure:
    """A grid of E[x|z] for ``n`` draws z ~ p(z), the same draws for the same seed.

    A conditional model draws from p(z|y): class ``label``, or one class per column.
    """
    vae.eval()
    y = sample_labels(vae, n, label)
    with torch.random.fork_rng(devices=[vae.device] if vae.device.type == "cuda" else []):
        torch.manual_seed(seed)
        images = vae.sample(n, y)
    if y is None or label is not None:
        title = "decoded prior samples" if y is None else f"decoded samples of class {label}"
        return _grid_figure(images, image_shape, ncols=8, title=title)
    return _grid_figure(images, image_shape, ncols=vae.num_classes, title="decoded samples, one class per column")


@torch.no_grad()
def reconstructions_figure(vae: VAE, x: torch.Tensor, image_shape: Sequence[int], n: int = 8,
                           y: torch.Tensor | None = None) -> Figure:
    """Originals (top row) above their reconstructions E[x | z = loc(x)] (bottom row).

    A decoder conditioned on labels needs ``y``, the labels of ``x``.
    """
    vae.eval()
    x = x[:n]
    images = torch.cat([x, vae.reconstruct(x, None if y is None else y[:n])])
    return _grid_figure(images, image_shape, ncols=len(x), title="originals (top), reconstructions (bottom)")


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG and close it."""
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def save_run_pictures(vae: VAE, test: Split, image_shape: Sequence[int], folder: str | Path) -> list[Path]:
    """Write ``reconstructions.png`` (of the first test images) and ``samples.png`` into ``folder``."""
    folder = Path(folder)
    test = test.to(vae.device)
    return [save(reconstructions_figure(vae, test.x, image_shape, y=test.y), folder / "reconstructions.png"),
            save(samples_figure(vae, image_shape), folder / "samples.png")]
