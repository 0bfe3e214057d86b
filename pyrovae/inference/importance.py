"""Importance weights log w = log p(x, z) - log q(z|x) of any Pyro model and guide, one per particle and example.

Their mean is the ELBO, and log p(x) ~ logsumexp_k log w_k - log K (Burda, Grosse & Salakhutdinov 2015).
Both traces run under a ``particles`` plate left of the model's plates, so one pass gives (K, B) weights, the
log densities summed over every other plate but the data plate. A model site marked
``infer={"enumerate": "parallel"}`` that the guide does not sample is summed out exactly.
:func:`check_model_and_guide` checks the per-example contract on two examples before any long work.
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

from pyrovae.model.checks import check_examples
from pyrovae.randomness import unchanged

PARTICLES = "particles"
"""The name of the plate over importance samples."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the weights' dimensions lie, found on a probe trace; ``enumerated``: the model sites summed out."""

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

    The probe leaves the caller's random stream and enclosing Pyro handlers alone.
    """
    check_examples(x)
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


def _site_sum(site: dict, layout: Layout) -> torch.Tensor:
    """A site's unscaled (masked) log density, summed over every plate but the data plate and particles."""
    log_prob = scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])
    return sum_over_plates(log_prob, site, (layout.data_plate, PARTICLES))


def _trace_sum(trace: poutine.Trace, layout: Layout) -> torch.Tensor:
    """The unscaled (masked) log densities of the trace, summed over every plate but the data plate and particles."""
    return sum(_site_sum(site, layout) for site in _sample_sites(trace).values())


def _particles_by_examples(log_prob: torch.Tensor, layout: Layout, num_particles: int, n: int) -> torch.Tensor:
    """A log density whose only dims of size above 1 are the particles' and the data plate's, as ``(K, n)``."""
    log_prob = log_prob.reshape(log_prob.shape[layout.particle_dim], log_prob.shape[layout.data_dim])
    return log_prob.expand(num_particles, n)


Traces = tuple[poutine.Trace, poutine.Trace]
"""A guide's trace and the model's trace replayed on it."""


def importance_traces(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int, layout: Layout,
                      model_args: Sequence = (), model_kwargs: dict | None = None) -> Traces:
    """The guide's trace of z_k ~ q(z|x), k = 1..num_particles, and the model's replayed on it."""
    model_kwargs = model_kwargs or {}
    with pyro.plate(PARTICLES, num_particles, dim=layout.particle_dim):
        guide_trace = poutine.trace(guide).get_trace(x, *model_args, **model_kwargs)
        replayed = poutine.replay(model, trace=guide_trace)
        if layout.enumerated:
            replayed = poutine.enum(replayed, first_available_dim=layout.particle_dim - 1)
        model_trace = poutine.trace(replayed).get_trace(x, *model_args, **model_kwargs)
    return guide_trace, model_trace


def trace_weights(guide_trace: poutine.Trace, model_trace: poutine.Trace, layout: Layout, num_particles: int,
                  n: int) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) of :func:`importance_traces`, shape ``(num_particles, n)``."""
    log_p = _trace_sum(model_trace, layout)
    enumeration_dims = list(range(log_p.dim() + layout.particle_dim))  # every dim left of the particles
    if enumeration_dims:
        log_p = log_p.logsumexp(enumeration_dims)
    return _particles_by_examples(log_p - _trace_sum(guide_trace, layout), layout, num_particles, n)


def site_log_prob(model_trace: poutine.Trace, name: str, layout: Layout, num_particles: int,
                  n: int) -> torch.Tensor:
    """log p(x_site | z_k) of the model site ``name`` of :func:`importance_traces`, shape ``(num_particles, n)``: its
    unscaled (masked) log density, summed over its other plates; for a model with no enumerated sites."""
    return _particles_by_examples(_site_sum(model_trace.nodes[name], layout), layout, num_particles, n)


def log_importance_weights(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int, layout: Layout,
                           model_args: Sequence = (), model_kwargs: dict | None = None) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), shape ``(num_particles, len(x))``."""
    traces = importance_traces(model, guide, x, num_particles, layout, model_args, model_kwargs)
    return trace_weights(*traces, layout, num_particles, len(x))


class ImportanceSampler:
    """The weights of ``model(x, *model_args, **model_kwargs)`` and the guide, their contract checked once.

    Tensors among the arguments with ``len(x)`` rows are per-example inputs, cut with ``x``.
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
        return trace_weights(*self.traces(examples, num_particles), self.layout, num_particles,
                             len(self.x[examples]))

    def log_weights_and_sites(self, examples: slice, num_particles: int,
                              sites: Sequence[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`log_weights`, and at the same draws :func:`site_log_prob` of each model site named in ``sites``."""
        guide_trace, model_trace = self.traces(examples, num_particles)
        n = len(self.x[examples])
        return (trace_weights(guide_trace, model_trace, self.layout, num_particles, n),
                [site_log_prob(model_trace, name, self.layout, num_particles, n) for name in sites])

    def traces(self, examples: slice, num_particles: int) -> Traces:
        """The guide's and the model's traces of ``num_particles`` draws for the examples ``x[examples]``."""
        n = len(self.x)
        return importance_traces(self.model, self.guide, self.x[examples], num_particles, self.layout,
                                 split_examples(self.model_args, n, examples),
                                 split_examples(self.model_kwargs, n, examples))
