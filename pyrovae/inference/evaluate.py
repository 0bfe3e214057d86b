"""Evaluation in nats per example: the negative ELBO, the importance-sampled log-likelihood, classification.

Both estimators take a :class:`~pyrovae.model.vae.VAE` or any Pyro model and guide (the first argument's
type picks the form). With K draws z_k ~ q(z|x), log p(x) ~ logsumexp_k [log p(x, z_k) - log q(z_k|x)] - log K
(Burda, Grosse & Salakhutdinov 2015), the number VAE papers report with K = 5000. A table model's report adds,
from the same draws, each column type's share of the log-likelihood.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import scipy.stats
import torch
from tqdm.auto import tqdm

from pyrovae.distributed import SINGLE, Processes, gather_objects, my_blocks
from pyrovae.inference.importance import ImportanceSampler
from pyrovae.memory import OutOfMemory, bytes_allocated, is_out_of_memory
from pyrovae.model.tables import TableVAE
from pyrovae.model.vae import VAE
from pyrovae.randomness import derived_seed, seeded, unchanged
from pyrovae.settings import DEVICE_HELP, Device, SettingError, check_choices, check_positive, setting

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET = 2 * 2**30
"""Bytes one chunk of the log-likelihood may allocate (2 GiB: at ease in a laptop's RAM or on any GPU)."""
EVAL_BLOCK = 500
"""Examples per block of :func:`evaluation_report`, each block drawing from its own seed."""
NO_MEMORY_LEFT = ("out of memory with a sample or two of an image or two; free memory on the device, or evaluate "
                  "on another device")
CPU_CHUNK_BYTES = 64 * 2**20
"""On a CPU, chunks stay below 64 MiB whatever the budget: bigger ones are slower (fresh pages faulted in)."""
LONGEST = 24 * 3600
"""Seconds an estimate of the log-likelihood may be projected to take: a day (papers' K = 5000 takes minutes)."""


@dataclasses.dataclass
class EvaluateConfig:
    """The settings of an evaluation, as ``pyrovae evaluate`` takes them; the functions below default to them."""

    split: Literal["test", "val"] = setting("test", "the split to evaluate")
    num_samples: int = setting(5000, "importance samples per example, at least 1", metavar="K")
    elbo_only: bool = setting(False, "only the negative ELBO (and, for conditional models, accuracy by ELBO): quick")
    memory_budget: float = setting(DEFAULT_MEMORY_BUDGET / 2**30, "most memory one chunk of the log-likelihood may "
                                                                   "allocate", metavar="GiB")
    limit: int | None = setting(None, "only the first N images of the split (quicker)", metavar="N")
    batch_size: int = setting(1000, "examples per batch of the ELBO")
    device: Device = setting("auto", DEVICE_HELP)
    seed: int = setting(0, "seed of the Monte Carlo draws")

    def __post_init__(self) -> None:
        check_choices(self)
        check_positive(self, "num_samples", "memory_budget", "limit", "batch_size")


@contextmanager
def evaluating(vae: VAE) -> Iterator[None]:
    """``vae`` in eval mode inside, back to its former mode after."""
    was_training = vae.training
    vae.eval()
    try:
        yield
    finally:
        vae.train(was_training)


def vae_sampler(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None) -> ImportanceSampler:
    """The importance sampler of ``vae.model`` and ``vae.guide`` on ``(x, y)``, moved to the VAE's device."""
    return ImportanceSampler(vae.model, vae.guide, x.to(vae.device), (None if y is None else y.to(vae.device),))


def log_importance_weights(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None,
                           num_particles: int = 1) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), shape ``(num_particles, B)``, unscaled by any KL weight."""
    return vae_sampler(vae, x, y).log_weights(slice(None), num_particles)


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if not value >= 1:
            raise ValueError(f"{name} must be positive, got {value}")


@functools.singledispatch
def negative_elbo(model: Callable, guide: Callable, x: torch.Tensor, *,
                  batch_size: int = EvaluateConfig.batch_size, num_particles: int = 1, model_args: Sequence = (),
                  model_kwargs: dict | None = None, data_plate: str = "data") -> torch.Tensor:
    """Per-example negative ELBO in nats, shape ``(N,)``: -mean_k [log p(x, z_k) - log q(z_k|x)].

    ``model(x, *model_args, **model_kwargs)`` and ``guide`` have their examples' sites in the plate
    ``data_plate``. The form ``negative_elbo(vae, x, y=None, batch_size, num_particles)`` checks its inputs.
    """
    _check_counts(batch_size=batch_size, num_particles=num_particles)
    sampler = ImportanceSampler(model, guide, x, model_args, model_kwargs, data_plate)
    return _negative_elbo(sampler, batch_size, num_particles)


@negative_elbo.register
def _(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None,
      batch_size: int = EvaluateConfig.batch_size, num_particles: int = 1) -> torch.Tensor:
    vae.check_inputs(x, y)
    _check_counts(batch_size=batch_size, num_particles=num_particles)
    with evaluating(vae):
        return _negative_elbo(vae_sampler(vae, x, y), batch_size, num_particles)


@torch.no_grad()
def _negative_elbo(sampler: ImportanceSampler, batch_size: int, num_particles: int = 1) -> torch.Tensor:
    """:func:`negative_elbo` of a sampler whose settings were checked."""
    return _in_chunks(lambda part, _: -sampler.log_weights(part, num_particles).mean(0), len(sampler), batch_size)


def _in_chunks(estimate: Callable[[slice, int], torch.Tensor], size: int, examples: int, particles: int = 1,
               bar: tqdm | None = None) -> torch.Tensor:
    """``estimate(part, particles)`` of consecutive parts of ``examples`` examples out of ``size``, concatenated;
    out of memory, the chunk is halved (examples first, then particles) and the part estimated again."""
    parts, start = [], 0
    while start < size:
        try:
            part = estimate(slice(start, start + examples), particles)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            if examples == particles == 1:
                raise OutOfMemory(NO_MEMORY_LEFT) from None
            smaller = (examples // 2, particles) if examples > 1 else (1, -(-particles // 2))
            log.warning(f"out of memory with chunks of {examples} images x {particles} samples; trying "
                        f"{smaller[0]} x {smaller[1]}")
            examples, particles = smaller
            continue
        parts.append(part)
        start += len(part)
        if bar is not None:
            bar.update(len(part))
    return torch.cat(parts)


@functools.singledispatch
def log_likelihood(model: Callable, guide: Callable, x: torch.Tensor, *,
                   num_samples: int = EvaluateConfig.num_samples,
                   model_args: Sequence = (), model_kwargs: dict | None = None, data_plate: str = "data",
                   memory_budget: float = DEFAULT_MEMORY_BUDGET, progress: bool = False) -> torch.Tensor:
    """Per-example importance-sampled log p(x) in nats, shape ``(N,)``, from ``num_samples`` draws z_k ~ q(z|x).

    Model and guide as for :func:`negative_elbo`. Chunks of particles and examples each allocate at most
    ``memory_budget`` bytes and are combined with a running logsumexp. The form ``log_likelihood(vae, x, y=None,
    num_samples, memory_budget, progress)`` checks its inputs and gives log p(x|y) with labels.
    """
    _check_estimator(num_samples, memory_budget)
    sampler = ImportanceSampler(model, guide, x, model_args, model_kwargs, data_plate)
    return _log_likelihood(sampler, num_samples, memory_budget, progress, note_chunks=True)


@log_likelihood.register
def _(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None,
      num_samples: int = EvaluateConfig.num_samples, memory_budget: float = DEFAULT_MEMORY_BUDGET,
      progress: bool = False) -> torch.Tensor:
    _check_estimator(num_samples, memory_budget)
    vae.check_inputs(x, y)
    with evaluating(vae):
        return _log_likelihood(vae_sampler(vae, x, y), num_samples, memory_budget, progress, note_chunks=True)


def _check_estimator(num_samples: int, memory_budget: float) -> None:
    if num_samples < 1:
        raise ValueError(f"the log-likelihood needs at least one sample per example, got num_samples={num_samples}")
    if not memory_budget > 0:
        raise ValueError(f"the memory budget must be a positive number of bytes, got memory_budget={memory_budget}")


def _log_likelihood(sampler: ImportanceSampler, num_samples: int, memory_budget: float,
                    progress: bool = False, note_chunks: bool = False) -> torch.Tensor:
    """:func:`log_likelihood` of a sampler whose settings were checked; ``note_chunks``: refused if too long
    (:func:`_planned_chunks`), and said if samples split."""
    return _importance_estimates(sampler, num_samples, memory_budget, (), progress, note_chunks)[:, 0]


@torch.no_grad()
def _importance_estimates(sampler: ImportanceSampler, num_samples: int, memory_budget: float,
                          sites: Sequence[str] = (), progress: bool = False,
                          note_chunks: bool = False) -> torch.Tensor:
    """The columns of :func:`_log_mean_weight` for every example, ``(N, 1 + len(sites))``, in chunks."""
    particles, examples = (_planned_chunks if note_chunks else chunk_shape)(sampler, num_samples, memory_budget)
    with tqdm(total=len(sampler), disable=not progress, unit="example", desc=f"log p(x), K={num_samples}",
              dynamic_ncols=True) as bar:
        return _in_chunks(lambda part, particles: _log_mean_weight(sampler, part, num_samples, particles, sites),
                          len(sampler), examples, particles, bar)


def _log_mean_weight(sampler: ImportanceSampler, part: slice, num_samples: int, particles: int,
                     sites: Sequence[str] = ()) -> torch.Tensor:
    """logsumexp_k log w_k - log K of the examples ``part``, then sum_k softmax(log w)_k log p(x_site | z_k) of each
    model site in ``sites``: its expectation under p(z|x) by self-normalized weights (Mattei & Frellsen 2019,
    MIWAE); shape ``(n, 1 + len(sites))``. The K draws come ``particles`` at a time."""
    total, chunks, means = None, [], []
    for done in range(0, num_samples, particles):
        k = min(particles, num_samples - done)
        if sites:
            log_w, log_p = sampler.log_weights_and_sites(part, k, sites)
        else:
            log_w, log_p = sampler.log_weights(part, k), []
        chunk = log_w.logsumexp(0)
        total = chunk if total is None else torch.logaddexp(total, chunk)
        chunks.append(chunk)
        means.append([(log_w.softmax(0) * log_p_site).sum(0) for log_p_site in log_p])
    # normalized over all K: each chunk's self-normalized mean, weighted by the chunk's share of the total weight
    shares = [(chunk - total).exp() for chunk in chunks]
    expected = [sum(share * mean for share, mean in zip(shares, site)) for site in zip(*means)]
    return torch.stack([total - math.log(num_samples), *expected], dim=1)


def chunk_shape(sampler: ImportanceSampler, num_samples: int, memory_budget: float) -> tuple[int, int]:
    """(particles, examples) per chunk of :func:`log_likelihood`: as many particles as fit, then examples, at the
    bytes per (particle, example) pair of a two-particle probe less a one-particle one."""
    if sampler.x.device.type == "cpu":
        memory_budget = min(memory_budget, CPU_CHUNK_BYTES)
    probe = slice(0, 2)
    try:
        with unchanged(sampler.x.device):  # the probes leave the estimate's random draws as they were
            one, two = (bytes_allocated(lambda k=k: sampler.log_weights(probe, k)) for k in (1, 2))
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        raise OutOfMemory(NO_MEMORY_LEFT) from None
    per_pair = max(1.0, (two - one) / len(sampler.x[probe]))
    pairs = max(1, int(memory_budget // per_pair))
    chunks_per_example = -(-num_samples // pairs)
    particles = -(-num_samples // chunks_per_example)  # equal chunks: 5000 = 2 x 2500, not 4107 + 893
    return particles, max(1, min(len(sampler), pairs // particles))


def _planned_chunks(sampler: ImportanceSampler, num_samples: int, memory_budget: float,
                    scores: int = 1) -> tuple[int, int]:
    """:func:`chunk_shape`, refused if one chunk's time projects the estimate (``scores`` per example: one per
    class) to take longer than :data:`LONGEST`; noted when each example's samples are split."""
    particles, examples = chunk_shape(sampler, num_samples, memory_budget)
    chunks = -(-num_samples // particles) * -(-len(sampler) // examples) * scores
    if chunks > 1:  # a single chunk is the estimate itself
        with unchanged(sampler.x.device):
            start = time.perf_counter()
            _log_mean_weight(sampler, slice(0, examples), particles, particles).cpu()  # .cpu() waits for a GPU
            took = time.perf_counter() - start
        if took * chunks > LONGEST:
            raise SettingError("num_samples", f"num_samples={num_samples} would take about {took * chunks / 3600:,.0f} "
                                              f"hours here ({chunks:,} chunks of {took:.2g} s); lower num_samples "
                                              f"(papers report K=5000)")
    if particles < num_samples:
        budget = min(memory_budget, CPU_CHUNK_BYTES) if sampler.x.device.type == "cpu" else memory_budget
        log.warning(f"num_samples={num_samples} samples of one image exceed one chunk of {budget / 2**20:.0f} MiB: "
                    f"each image's are drawn in {-(-num_samples // particles)} chunks of {particles} and combined "
                    f"exactly")
    return particles, examples


def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """The mean of per-example values and its standard error, std / sqrt(N) with the unbiased std (NaN for N < 2)."""
    stderr = float(scipy.stats.sem(values.cpu().numpy(), ddof=1)) if len(values) > 1 else float("nan")
    return values.mean().item(), stderr


def class_scores(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                 num_classes: int) -> torch.Tensor:
    """The ``(N, C)`` table ``score(x, y=c)`` for every class c, e.g. an estimate of log p(x|y=c), every class
    scored with the same random numbers, so that comparing classes adds no noise of shared terms."""
    seed = int(torch.randint(2**62, ()))
    columns = []
    for c in range(num_classes):
        with seeded(x.device, seed):
            columns.append(score(x, torch.full((len(x),), c, dtype=torch.long, device=x.device)))
    return torch.stack(columns, dim=1)


def class_log_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log p(y) from the label frequencies, each class counted at least once so that none is impossible."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).clamp(min=1).double()
    return (counts / counts.sum()).log().float()


def classify(log_px_given_y: torch.Tensor, log_py: torch.Tensor | None = None) -> torch.Tensor:
    """Classification by likelihood: argmax_y log p(x|y) + log p(y) (uniform p(y) if not given)."""
    if log_py is not None:
        log_px_given_y = log_px_given_y + log_py.to(log_px_given_y.device)
    return log_px_given_y.argmax(dim=1)


def accuracy(predicted: torch.Tensor, labels: torch.Tensor, clusters: bool = False) -> float:
    """The share of ``predicted`` classes equal to ``labels``; with ``clusters``, after the best one-to-one
    matching of clusters to classes (the Hungarian method)."""
    predicted, labels = predicted.cpu(), labels.cpu()
    if not clusters:
        return (predicted == labels).float().mean().item()
    from scipy.optimize import linear_sum_assignment

    size = int(max(predicted.max(), labels.max())) + 1
    counts = torch.bincount(predicted * size + labels, minlength=size * size).reshape(size, size)
    clusters_matched, classes_matched = linear_sum_assignment(counts.numpy(), maximize=True)
    return counts[clusters_matched, classes_matched].sum().item() / len(labels)


def _block_scores(vae: VAE, x: torch.Tensor, y: torch.Tensor | None, num_samples: int | None, batch_size: int,
                  memory_budget: float) -> torch.Tensor:
    """Per-example columns of one block, on the CPU: -ELBO, then log p(x) or log p(x|y=c) for every class c; a
    table model's then E[log p(x_type,obs | z) | x_obs] of each of its column types (:func:`_type_sites`)."""
    x, y = x.to(vae.device), None if y is None else y.to(vae.device)
    neg_elbo = _negative_elbo(vae_sampler(vae, x, y), batch_size)
    if num_samples:
        def estimate(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            return _log_likelihood(vae_sampler(vae, x, y), num_samples, memory_budget)
    else:
        def estimate(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            return -_negative_elbo(vae_sampler(vae, x, y), batch_size)
    if vae.conditional:
        scores = class_scores(estimate, x, vae.num_classes)
    elif num_samples:
        scores = _importance_estimates(vae_sampler(vae, x, y), num_samples, memory_budget, _type_sites(vae))
    else:
        scores = neg_elbo.new_zeros(len(x), 0)
    return torch.cat([neg_elbo[:, None], scores], dim=1).cpu()


def _type_sites(vae: VAE) -> list[str]:
    """A table model's sites, ``x_<type>`` for each column type present; none for images."""
    return [f"x_{kind}" for kind in vae.likelihood.groups] if isinstance(vae, TableVAE) else []


def _type_report(vae: TableVAE, x: torch.Tensor, expected_log_p: torch.Tensor) -> dict[str, dict[str, float]]:
    """The per-type numbers of :func:`evaluation_report` from the ``(N, types)`` posterior expectations
    E[log p(x_type,obs | z) | x_obs] of :func:`_block_scores`."""
    # 0.0 - value: a type with no observed cell scores 0.0, not -0.0
    nll = {kind: 0.0 - value for kind, value in zip(vae.likelihood.groups, expected_log_p.mean(0).tolist())}
    observed = ~x.isnan()
    return {"nll_by_type": nll,
            "nll_share_by_type": {kind: value / sum(nll.values()) for kind, value in nll.items()},
            "observed_cells_by_type": {kind: observed[:, group].sum().item() / len(x)
                                       for kind, group in vae.likelihood.groups.items()}}


def evaluation_report(vae: VAE, x: torch.Tensor, y: torch.Tensor | None = None,
                      num_samples: int | None = EvaluateConfig.num_samples, log_py: torch.Tensor | None = None,
                      batch_size: int = EvaluateConfig.batch_size,
                      memory_budget: float = DEFAULT_MEMORY_BUDGET, progress: bool = False, seed: int = 0,
                      processes: Processes = SINGLE, clusters: bool = False) -> dict[str, float | dict[str, float]]:
    """The numbers of ``eval.json``, per example in nats, each with its standard error across examples.

    ``neg_elbo``; unless ``num_samples`` is ``None``, ``nll`` = -log p(x) and ``bits_per_dim`` = nll / (D log 2).
    A conditional model scores every class c (log p(x|y=c), or the ELBO) and adds ``accuracy`` of
    argmax_y log p(x|y) + log p(y); its ``nll`` is -logsumexp_y [log p(y) + log p(x|y)] and ``nll_given_label``
    -log p(x|y) for the true label. A classifier q(y|x) adds ``accuracy_guide``. With ``clusters`` the
    accuracies match clusters to classes, and the numbers given the true label are left out.

    A table model's ``nll`` is -log p(x_obs), its missing cells left out. With ``num_samples`` it adds, for each
    column type present, ``nll_by_type``: -E[log p(x_type,obs | z) | x_obs] per row, the expectation under p(z|x_obs)
    by the self-normalized weights of the same K draws (Mattei & Frellsen 2019, MIWAE); ``nll_share_by_type``: each
    type's part of their sum, the part of nll that the decoder leaves unexplained (nll is that sum plus
    KL(p(z|x_obs) || p(z))); and ``observed_cells_by_type``: observed cells per row, to compare types per cell. The
    shares sum to 1; a negative share is a type of negative nats (real and positive columns, whose densities can
    exceed 1), and it lifts the others above 1.

    Blocks of :data:`EVAL_BLOCK` examples draw from seeds derived from ``seed``; under torchrun the ranks
    share out the blocks, so any number of processes gives the same numbers.
    """
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"num_samples must be at least 1 (None: the ELBO only), got {num_samples}")
    _check_estimator(1, memory_budget)
    vae.check_inputs(x, y)
    starts = range(0, len(x), EVAL_BLOCK)
    mine = my_blocks(len(starts), processes)
    computed = []
    desc = f"log p(x), K={num_samples}" if num_samples else "-ELBO"
    with evaluating(vae):
        batch_size = min(batch_size, chunk_shape(vae_sampler(vae, x, y), 1, memory_budget)[1])
        if num_samples:
            per_example = vae.num_classes if vae.conditional else 1
            _planned_chunks(vae_sampler(vae, x, y), num_samples, memory_budget, per_example)
        with tqdm(total=sum(len(x[starts[b]:starts[b] + EVAL_BLOCK]) for b in mine), disable=not progress,
                  unit="example", desc=desc, dynamic_ncols=True) as bar:
            for block in mine:
                part = slice(starts[block], starts[block] + EVAL_BLOCK)
                with seeded(vae.device, derived_seed(seed, block)):
                    computed.append((block, _block_scores(vae, x[part], None if y is None else y[part], num_samples,
                                                          batch_size, memory_budget)))
                bar.update(len(x[part]))
    columns = torch.cat([scores for _, scores in sorted(itertools.chain(*gather_objects(computed, processes)),
                                                         key=lambda item: item[0])])
    report: dict[str, float | dict[str, float]] = {"num_examples": len(x)}
    if not clusters:  # the ELBO given the true label; a cluster model's labels are not its clusters
        report["neg_elbo"], report["neg_elbo_stderr"] = mean_and_stderr(columns[:, 0])
    scores = columns[:, 1:]  # log p(x) (then a table's types), or log p(x|y=c) for every class c
    if vae.conditional:
        log_py = log_py if log_py is not None else torch.full((vae.num_classes,), -math.log(vae.num_classes))
        report["accuracy"] = accuracy(classify(scores, log_py), y, clusters)
        if vae.classifier is not None:
            with evaluating(vae):
                guessed = torch.cat([vae.classify(x[i:i + batch_size].to(vae.device))
                                     for i in range(0, len(x), batch_size)])
            report["accuracy_guide"] = accuracy(guessed, y, clusters)
        if not num_samples:
            return report
        log_px = (scores + log_py).logsumexp(1)
        if not clusters:
            report["nll_given_label"], report["nll_given_label_stderr"] = mean_and_stderr(
                -scores.gather(1, y.cpu()[:, None])[:, 0])
    elif num_samples:
        log_px = scores[:, 0]
    else:
        return report
    report["nll"], report["nll_stderr"] = mean_and_stderr(-log_px)
    report["num_samples"] = num_samples
    report["bits_per_dim"] = report["nll"] / (vae.x_dim * math.log(2))
    if isinstance(vae, TableVAE):
        report.update(_type_report(vae, x, scores[:, 1:]))
    return report
