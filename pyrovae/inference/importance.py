"""Importance weights of any Pyro model and guide, one per particle and example.

For a model p(x, z) and a guide q(z|x) written over a plate of examples, a draw
z ~ q(z|x) has the log importance weight log w = log p(x, z) - log q(z|x). Its mean under
q is the ELBO, and (Burda, Grosse & Salakhutdinov 2015)

    log p(x) ~ logsumexp_k log w_k - log K,   z_1..z_K ~ q(z|x),

a lower bound in expectation that tightens as K grows. Both traces are taken under a
``particles`` plate left of every plate the model declares, so one pass gives weights of
shape (K, B) for any model: the log densities are summed over every plate but the data
plate and the particles. A model site marked ``infer={"enumerate": "parallel"}`` that the
guide does not sample is summed out exactly: p(x, z) = sum_y p(x, y, z).

Before any long work, :func:`check_model_and_guide` runs both once on two examples and
checks the contract that makes the weights per example (every latent and observed site in
the data plate, the same latent sites in model and guide), so a breach is one line naming
the site.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Container, Sequence
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

from pyrovae.randomness import unchanged

PARTICLES = "particles"
"""The name of the plate over importance samples."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the weights' dimensions lie, found on a probe trace.

    ``data_dim`` is the data plate's dim, ``particle_dim`` the one left of every plate, and
    ``enumerated`` the model sites summed out exactly (their dims go left of the particles).
    """

    data_plate: str
    data_dim: int
    particle_dim: int
    enumerated: frozenset[str] = frozenset()


def split_examples(values: Any, n: int, part: slice) -> Any:
    """``values`` (a tuple or dict of arguments) with every tensor of ``n`` rows cut to the rows ``part``."""
    def cut(value: Any) -> Any:
        return value[part] if torch.is_tensor(value) and value.dim() and len(value) == n else value

    if isinstance(values, dict):
        return {key: cut(value) for key, value in values.items()}
    return tuple(cut(value) for value in values)


def _plate_names(site: dict) -> list[str]:
    return [frame.name for frame in site["cond_indep_stack"]]


def _sample_sites(trace: poutine.Trace) -> dict[str, dict]:
    """The trace's sample sites, without the index draws of subsampling plates."""
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


def _latent_sites(trace: poutine.Trace) -> dict[str, dict]:
    return {name: site for name, site in _sample_sites(trace).items() if not site["is_observed"]}


def check_model_and_guide(model: Callable, guide: Callable, x: torch.Tensor, model_args: Sequence = (),
                          model_kwargs: dict | None = None, data_plate: str = "data") -> Layout:
    """Run ``guide`` and ``model`` once on the first two examples; raise a one-line ``ValueError`` naming the
    site that breaks the per-example contract, else return the :class:`Layout` of their weights.

    The probe draws no random numbers from the caller's stream and registers nothing with
    enclosing Pyro handlers.
    """
    kwargs = split_examples(model_kwargs or {}, len(x), slice(0, 2))
    args = split_examples(tuple(model_args), len(x), slice(0, 2))
    with torch.no_grad(), poutine.block(), unchanged(x.device):
        guide_trace = poutine.trace(guide).get_trace(x[:2], *args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x[:2], *args, **kwargs)
    sites = [(side, name, site) for side, trace in (("model", model_trace), ("guide", guide_trace))
             for name, site in _sample_sites(trace).items()]
    data_dims = {frame.dim for _, _, site in sites for frame in site["cond_indep_stack"] if frame.name == data_plate}
    if not data_dims:
        raise ValueError(f"neither model nor guide has a plate named {data_plate!r}; wrap the examples' sites in "
                         f"pyro.plate({data_plate!r}, len(x)) or pass data_plate='<your plate name>'")
    for side, name, site in sites:
        if data_plate not in _plate_names(site):
            kind = "observed" if site["is_observed"] else "latent"
            raise ValueError(f"{side} site {name!r} ({kind}) lies outside the plate {data_plate!r}: a site shared by "
                             f"all examples has no per-example weight; put it inside the plate (a global latent "
                             f"needs another estimator)")
    guide_latents, model_latents = _latent_sites(guide_trace), _latent_sites(model_trace)
    enumerated = {name for name, site in model_latents.items()
                  if name not in guide_latents and site["infer"].get("enumerate") == "parallel"}
    unmatched = sorted(guide_latents.keys() - model_latents.keys())
    if unmatched:
        raise ValueError(f"guide site {unmatched[0]!r} has no site of that name in the model; the guide must sample "
                         f"the model's latent sites and no others")
    unsampled = sorted(model_latents.keys() - guide_latents.keys() - enumerated)
    if unsampled:
        raise ValueError(f"model site {unsampled[0]!r} is latent but the guide does not sample it; add it to the "
                         f"guide, or mark it infer={{'enumerate': 'parallel'}} to sum it out exactly")
    for name in enumerated:
        if _plate_names(model_latents[name]) != [data_plate]:
            raise ValueError(f"model site {name!r} is enumerated inside plates other than {data_plate!r}; "
                             f"only per-example discrete sites directly in {data_plate!r} are summed out")
    leftmost = min(frame.dim for _, _, site in sites for frame in site["cond_indep_stack"])
    return Layout(data_plate, data_dims.pop(), leftmost - 1, frozenset(enumerated))


def sum_over_plates(log_prob: torch.Tensor, site: dict, keep: Container[str]) -> torch.Tensor:
    """A site's log density summed over the dims of its plates, except those named in ``keep`` (kept, as size 1
    where the density does not vary along them)."""
    dims = [frame.dim for frame in site["cond_indep_stack"] if frame.name not in keep and -frame.dim <= log_prob.dim()]
    return log_prob.sum(dims, keepdim=True) if dims else log_prob


def _per_example_log_prob(site: dict, layout: Layout) -> torch.Tensor:
    """The site's unscaled (masked) log density, summed over every plate but the data plate and the particles.

    Unscaled: a ``poutine.scale`` such as a KL weight, or a subsampling plate's scale,
    changes what is optimized, not the density evaluated here.
    """
    log_prob = scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])
    return sum_over_plates(log_prob, site, (layout.data_plate, PARTICLES))


def _trace_sum(trace: poutine.Trace, layout: Layout) -> torch.Tensor:
    return sum(_per_example_log_prob(site, layout) for site in _sample_sites(trace).values())


def log_importance_weights(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int, layout: Layout,
                           model_args: Sequence = (), model_kwargs: dict | None = None) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), shape ``(num_particles, len(x))``.

    ``layout`` comes from :func:`check_model_and_guide`. Enumerated model sites are summed
    out: a logsumexp over their values, per example and particle.
    """
    model_kwargs = model_kwargs or {}
    with pyro.plate(PARTICLES, num_particles, dim=layout.particle_dim):
        guide_trace = poutine.trace(guide).get_trace(x, *model_args, **model_kwargs)
        replayed = poutine.replay(model, trace=guide_trace)
        if layout.enumerated:
            replayed = poutine.enum(replayed, first_available_dim=layout.particle_dim - 1)
        model_trace = poutine.trace(replayed).get_trace(x, *model_args, **model_kwargs)
    log_p = _trace_sum(model_trace, layout)
    enumeration_dims = list(range(log_p.dim() + layout.particle_dim))  # every dim left of the particles
    if enumeration_dims:
        log_p = log_p.logsumexp(enumeration_dims)
    weights = log_p - _trace_sum(guide_trace, layout)
    weights = weights.reshape(weights.shape[layout.particle_dim], weights.shape[layout.data_dim])
    return weights.expand(num_particles, len(x))


class ImportanceSampler:
    """The weights of one model and guide on the examples ``x``, their contract checked once.

    ``model(x, *model_args, **model_kwargs)`` and the guide alike; tensors among the
    arguments with ``len(x)`` rows are per-example inputs (labels, say) and are cut with
    ``x`` (see :func:`split_examples`).
    """

    def __init__(self, model: Callable, guide: Callable, x: torch.Tensor, model_args: Sequence = (),
                 model_kwargs: dict | None = None, data_plate: str = "data"):
        self.model, self.guide, self.x = model, guide, x
        self.model_args, self.model_kwargs = tuple(model_args), dict(model_kwargs or {})
        self.layout = check_model_and_guide(model, guide, x, self.model_args, self.model_kwargs, data_plate)

    def __len__(self) -> int:
        return len(self.x)

    def log_weights(self, examples: slice, num_particles: int) -> torch.Tensor:
        """``(num_particles, n)`` log weights of the examples ``x[examples]``."""
        n = len(self.x)
        return log_importance_weights(self.model, self.guide, self.x[examples], num_particles, self.layout,
                                      split_examples(self.model_args, n, examples),
                                      split_examples(self.model_kwargs, n, examples))
