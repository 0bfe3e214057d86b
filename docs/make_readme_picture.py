"""Draw docs/images/digits.png, the README's first picture: what a VAE trained on the bundled digits does.

    python docs/make_readme_picture.py          # seconds on a quiet 2-core CPU

Trains a VAE with a 2-D latent on scikit-learn's 8x8 digits, then shows its decoded prior samples beside the
decoded grid over [-2, 2]^2 of its latent space, both from :mod:`pyrovae.report.plots`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyro

import pyrovae
from pyrovae.report import plots


def readme_picture(epochs: int) -> plots.NotebookFigure:
    """Samples and manifold of a digits VAE with a 2-D latent, trained ``epochs`` epochs, side by side."""
    pyro.set_rng_seed(0)
    data = pyrovae.load_dataset(pyrovae.DataConfig(dataset="digits"))
    vae = pyrovae.build_vae(pyrovae.ModelConfig(image_shape=data.image_shape, z_dim=2, hidden=(256,)))
    pyrovae.fit(vae, data, pyrovae.TrainConfig(epochs=epochs, device="cpu"), progress=False, verbose=False)
    fig = plots.NotebookFigure(figsize=(8, 4.2), layout="constrained")
    tiles = (plots.sample_tiles(vae, n=100), plots.manifold_tiles(vae, n=10))
    titles = ("decoded draws z ~ p(z)", "decoded grid over [-2, 2]^2 of the 2-D latent")
    for ax, picture, title in zip(fig.subplots(1, 2), tiles, titles):
        ax.imshow(picture.grid(data.image_shape).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"pyrovae on scikit-learn's 8x8 digits: a VAE with a 2-D latent, {epochs} epochs", fontsize=11)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "images" / "digits.png")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plots.save(readme_picture(args.epochs), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
