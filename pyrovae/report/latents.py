"""What the encoder learned: posterior means, KL per latent dimension, active units, principal directions, and
the plane a latent scatter draws the means on.

The numbers behind the latent-space pictures of :mod:`pyrovae.report.plots` and :mod:`pyrovae.report.table_plots`,
apart from the drawing.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import kl_divergence

from pyrovae.model.vae import VAE

ACTIVE_UNIT_THRESHOLD = 0.01
"""Burda et al. (2015): unit i is active when Cov_x(E_q[z_i | x]) exceeds this."""
TSNE_MAX_POINTS = 2000
"""t-SNE is quadratic-ish in the points: a latent scatter embeds at most this many test examples."""


@torch.no_grad()
def posteriors(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc, scale)`` of q(z|x) for every image, each ``(N, Z)``, in batches (see :meth:`VAE.encode`)."""
    locs, scales = zip(*(vae.encode(batch) for batch in x.split(batch_size)))
    return torch.cat(locs), torch.cat(scales)


def encoder_means(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """E_q[z | x] for every image, ``(N, Z)``, computed in batches."""
    return posteriors(vae, x, batch_size=batch_size)[0]


def active_units(means: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> torch.Tensor:
    """Boolean ``(Z,)``: which units' posterior means vary across the data by more than ``threshold``."""
    return means.var(0) > threshold


def principal_directions(means: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(center, directions (k, Z), std (k,))``: the k directions of largest variance of ``means``."""
    center = means.mean(0)
    _, singular_values, vt = torch.linalg.svd(means - center, full_matrices=False)
    std = singular_values[:k] / max(len(means) - 1, 1) ** 0.5
    return center, vt[:k], std


@torch.no_grad()
def latent_plane(vae: VAE, x: torch.Tensor, heights: torch.Tensor | None = None, height_name: str = "label",
                 tsne: bool = False, seed: int = 0) -> tuple[torch.Tensor, dict[str, str]]:
    """The encoder means of ``x`` as points ``(M, 2)`` of a plane, on the CPU, with the plane's ``xlabel``,
    ``ylabel`` and ``title``: a 1D latent against ``heights`` (named ``height_name``; default 0), jittered from
    ``seed``; 2D as it is; more on its two principal directions, or embedded by t-SNE (then M is at most
    :data:`TSNE_MAX_POINTS`, the first examples of ``x``; else every example)."""
    means = encoder_means(vae, x).cpu()
    if vae.z_dim == 1:
        jitter = torch.Generator().manual_seed(seed)
        rows = torch.zeros(len(means)) if heights is None else heights.cpu().float()
        rows = rows + 0.3 * (torch.rand(len(means), generator=jitter) - 0.5)
        height = "jitter" if heights is None else f"{height_name} (jittered)"
        return torch.stack([means[:, 0], rows], dim=1), {"xlabel": "z", "ylabel": height,
                                                         "title": "encoder means, 1D latent"}
    if vae.z_dim == 2:
        return means, {"xlabel": "z1", "ylabel": "z2", "title": "encoder means"}
    if tsne:
        from sklearn.manifold import TSNE

        means = means[:TSNE_MAX_POINTS]
        perplexity = min(30.0, len(means) - 1)  # t-SNE's default, or less for a small test split
        embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            means.numpy())
        return torch.from_numpy(embedded), {"xlabel": "t-SNE 1", "ylabel": "t-SNE 2",
                                            "title": f"encoder means ({vae.z_dim}D) by t-SNE"}
    center, directions, _ = principal_directions(means)
    return (means - center) @ directions.T, {"xlabel": "principal direction 1", "ylabel": "principal direction 2",
                                             "title": f"encoder means ({vae.z_dim}D), PCA"}


def _marginals(p: dist.Distribution) -> dist.Distribution:
    """The one-dimensional marginals p(z_i) of a distribution over ``z`` as batch shape ``(..., Z)``."""
    while isinstance(p, dist.Independent):
        p = p.base_dist
    if isinstance(p, dist.Normal):
        return p
    if isinstance(p, dist.MixtureSameFamily):
        components = p.component_distribution
        while isinstance(components, dist.Independent):
            components = components.base_dist
        if isinstance(components, dist.Normal):
            z_dim = components.loc.shape[-1]
            logits = p.mixture_distribution.logits.unsqueeze(-2)  # (..., 1, K)
            logits = logits.expand(*logits.shape[:-2], z_dim, logits.shape[-1])
            per_dim = dist.Normal(components.loc.transpose(-1, -2), components.scale.transpose(-1, -2))
            return dist.MixtureSameFamily(dist.Categorical(logits=logits), per_dim)
    raise ValueError(f"KL per dimension needs a prior made of diagonal Gaussians (Normal, or a mixture of "
                     f"them); this prior returns {type(p).__name__}")


@torch.no_grad()
def kl_per_dimension(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None, num_samples: int = 16,
                     batch_size: int = 1000) -> torch.Tensor:
    """KL(q(z_i|x) || p(z_i)) per latent dimension i, averaged over ``x``: ``(Z,)`` in nats.

    Closed form where torch has it; else a Monte Carlo estimate with ``num_samples`` draws per image.
    """
    total = torch.zeros(vae.z_dim, device=x.device)
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        yb = None if y is None else y[start:start + batch_size]
        loc, scale = vae.encode(xb)
        q = dist.Normal(loc, scale)
        p = _marginals(vae.prior(yb))
        try:
            kl = kl_divergence(q, p)
        except NotImplementedError:
            z = q.sample((num_samples,))
            kl = (q.log_prob(z) - p.log_prob(z)).mean(0)
        total += kl.expand(len(xb), vae.z_dim).sum(0)
    return total / len(x)
