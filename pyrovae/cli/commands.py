"""What each ``pyrovae`` subcommand does: ``train``, ``evaluate``, ``sample``, ``encode``, ``reconstruct``, ``impute``,
``plot``."""


from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyro
import torch

from pyrovae.cli.parser import RESUMABLE
from pyrovae.data.datasets import DataConfig, Dataset, Split, as_floats, load_dataset
from pyrovae.data.label_mix import visible_labels
from pyrovae.data.table_output import table_bytes
from pyrovae.data.tables import is_table_file, read_table
from pyrovae.defaults import TABLE_DEFAULTS, binarization, configure
from pyrovae.distributed import from_main, join
from pyrovae.files import NoSpaceError, atomic_file, cannot_write, write_atomically
from pyrovae.inference.evaluate import EvaluateConfig, class_log_prior, evaluation_report
from pyrovae.inference.imputation import impute
from pyrovae.model.build import build_vae
from pyrovae.model.config import LABEL_PRIORS, ModelConfig
from pyrovae.model.tables import TableVAE
from pyrovae.model.vae import VAE
from pyrovae.report import plots
from pyrovae.report.latents import posteriors
from pyrovae.report.tensorboard import check_installed, write_run_events
from pyrovae.runs.load import load_data, load_run
from pyrovae.runs.rundir import CHECKPOINT, EVAL, RunDir, default_run_dir
from pyrovae.runs.writer import RunWriter
from pyrovae.settings import SettingError, check_positive, flag, from_args, resolve_device
from pyrovae.training.callbacks import Callback
from pyrovae.training.config import TrainConfig
from pyrovae.training.loop import fit
from pyrovae.training.preflight import check_model_fits

SAMPLE_CHUNK = 10_000
"""Samples decoded at once by ``pyrovae sample --out FILE.npy``."""


class RunPictures(Callback):
    """Draws the run's pictures into its directory when training ends (``pyrovae plot`` redraws them)."""

    files = tuple(f"{name}.png" for name in plots.PICTURES)

    def __init__(self, vae: VAE, data: Dataset, run: RunDir, image_shape: Sequence[int]):
        self.vae, self.data, self.run, self.image_shape = vae, data, run, image_shape

    def training_done(self, trained: list[dict[str, float]]) -> None:
        options = plots.PictureOptions(elbo=self.run.settings(TrainConfig, "train").elbo)
        plots.save_run_pictures(self.vae, self.data.test, self.image_shape, self.run.path,
                                metrics=self.run.read_metrics(), options=options)


def _train(args: argparse.Namespace) -> None:
    if args.resume and args.run_dir is None:
        raise ValueError("resume=True needs run_dir=DIR, the run directory to continue")
    processes, _ = join(resolve_device(args.device))
    run = RunDir(from_main(default_run_dir() if args.run_dir is None else args.run_dir, processes))
    out = run.path
    if processes.is_main:  # refused before any data are read; fit checks again, under the run's lock
        RunWriter(run).check(args.resume, args.overwrite, extra=RunPictures.files)
    if args.resume:  # the saved settings, and the data they were trained on (refused if they changed)
        model_config, data = run.settings(ModelConfig, "model"), load_data(run)
        train_config = _resumed(run, args)
    else:
        if is_table_file(args.dataset):  # a table's own defaults, for the settings not given
            vars(args).update({name: value for name, value in TABLE_DEFAULTS.items() if name not in args.given})
        train_config = from_args(TrainConfig, args)
        data = load_dataset(_data_config(args), resolve_device(train_config.device))
        model_config = _model_config(args, data)
    device = resolve_device(train_config.device)
    check_model_fits(model_config, device)  # by formula, before the model is built
    pyro.set_rng_seed(train_config.seed)
    vae = build_vae(model_config)
    parallel = f" in {processes.world_size} processes" if processes.parallel else ""
    examples = "rows" if data.schema is not None else "images"
    print(f"training on {data.name} ({len(data.train)} train / {len(data.val)} validation {examples}) on {device}"
          f"{parallel}; training {examples} {data.train.storage()}; run directory: {out}")
    pictures = [RunPictures(vae, data, run, model_config.image_shape)] if processes.is_main else []
    try:
        fit(vae, data, train_config, run_dir=out, resume=args.resume, overwrite=args.overwrite,
            progress=not args.no_progress, callbacks=pictures)
    except NoSpaceError as full:
        then = (f"continue exactly with `pyrovae train --out {out} --resume`" if run.file(CHECKPOINT).exists()
                else "train again")
        raise NoSpaceError(f"{full}, then {then}") from None
    print(f"done: {out}  (next: pyrovae evaluate {out})")


def _resumed(run: RunDir, args: argparse.Namespace) -> TrainConfig:
    """The run's training settings, changed (and said so) by the resumable flags given; any other must match."""
    saved, config = run.read_config(), run.settings(TrainConfig, "train")
    ran = {**saved["data"], **saved["model"], **saved["train"], "conditional": bool(saved["model"]["num_classes"])}
    for name in sorted(args.given & ran.keys() - set(RESUMABLE)):
        if getattr(args, name) != ran[name]:
            raise SettingError(name, f"{name} cannot change when resuming (the run's: {ran[name]}); leave it out, or "
                                     f"train a new run with another run_dir=DIR")
    changed = {name: getattr(args, name) for name in RESUMABLE
               if name in args.given and getattr(args, name) != getattr(config, name)}
    print(f"resuming {run.path} with the settings in its config.json (only {', '.join(map(flag, RESUMABLE))} apply)")
    for name, value in changed.items():
        print(f"  {flag(name)} {value} replaces the run's {getattr(config, name)}, in config.json too")
    return dataclasses.replace(config, **changed)


def _data_config(args: argparse.Namespace) -> DataConfig:
    """The data the train flags describe; ``--binarize`` defaults to what ``--likelihood`` can score."""
    if args.labeled is not None and not (args.conditional or args.decoder_conditioning or args.prior in LABEL_PRIORS):
        raise ValueError(f"--labeled {args.labeled} hides labels from a model that reads them; add --conditional "
                         f"(a model without labels needs no --labeled)")
    likelihood = "table" if is_table_file(args.dataset) else args.likelihood  # a likelihood per column
    return from_args(DataConfig, args, binarize=args.binarize or binarization(likelihood))


def _model_config(args: argparse.Namespace, data: Dataset) -> ModelConfig:
    """The model the train flags describe for ``data``: ``--conditional`` defaults the prior to class-means, and
    :func:`~pyrovae.defaults.configure` sets what follows from the other settings, as in Python."""
    prior = args.prior or ("class-means" if args.conditional else "standard")
    conditional = args.conditional or args.decoder_conditioning or prior in LABEL_PRIORS
    if conditional and prior not in LABEL_PRIORS and not args.decoder_conditioning:
        raise ValueError(f"--conditional with --prior {prior} would ignore the labels (that prior does not "
                         f"read them); add --decoder-conditioning, or use --prior class-means")
    if conditional and data.num_classes < 2:
        raise ValueError(f"{data.name} has no labels (all its examples are of one class) for a model that reads them; "
                         f"train without --conditional, or give labels: an .npz with 'y', or class subfolders")
    if data.columns and "likelihood" in args.given and args.likelihood != "table":
        raise ValueError(f"--likelihood {args.likelihood} scores every column alike; a table's columns each have their "
                         f"own (--column-types): leave --likelihood out")
    table = {"columns": data.columns, "likelihood": "table"} if data.columns else {}
    model = from_args(ModelConfig, args, prior=prior, image_shape=data.image_shape,
                      num_classes=data.num_classes if conditional else None, **table)
    return configure(model, data.config)[0]


def _evaluate(args: argparse.Namespace) -> None:
    settings = from_args(EvaluateConfig, args)
    processes, device = join(resolve_device(settings.device))
    vae = load_run(args.run_dir, device, data=False, metrics=False).vae
    data = load_data(RunDir(args.run_dir))
    out = _output_file(args, default=Path(args.run_dir) / EVAL)
    split = getattr(data, settings.split)
    if settings.limit is not None:
        split = Split(split.x[:settings.limit], split.y[:settings.limit])
    pyro.set_rng_seed(settings.seed)
    log_py = class_log_prior(visible_labels(data.train), vae.num_classes) if vae.conditional else None
    num_samples = None if settings.elbo_only else settings.num_samples
    rows = "rows" if plots.is_table(data.image_shape) else "images"  # a table's columns have no bits per dimension
    each = f"K={num_samples} samples" if num_samples else "the ELBO"
    classes = f" x {vae.num_classes} classes (a conditional model scores every class)" if vae.conditional else ""
    print(f"evaluating {len(split)} {rows} of the {settings.split} split, {each} per {rows[:-1]}{classes}")
    report = evaluation_report(vae, as_floats(split.x), split.y, num_samples, log_py, settings.batch_size,
                               settings.memory_budget * 2**30, progress=not args.no_progress and processes.is_main,
                               seed=settings.seed, processes=processes, clusters=data.config.labeled == 0)
    if rows == "rows":
        report.pop("bits_per_dim", None)
    result = {"split": settings.split, **report}
    if processes.is_main:  # no lock: a run still training is read and left alone, but for this file
        write_atomically(out, json.dumps(result, indent=2).encode())
    print(f"{settings.split} split, {len(split)} {rows}, nats per {rows[:-1]} (± standard error):")
    titles = {"neg_elbo": "negative ELBO" + " given the label" * vae.conditional,
              "nll_given_label": "NLL given the label", "nll": f"NLL, K={settings.num_samples}"}
    for key, title in titles.items():
        if key in report:
            bits = f"   ({report['bits_per_dim']:.4f} bits/dim)" if key == "nll" and "bits_per_dim" in report else ""
            print(f"  {title:<30}{report[key]:10.3f} ± {report[key + '_stderr']:.3f}{bits}")
    matched = ", clusters matched to classes" if data.config.labeled == 0 else ""
    if "accuracy" in report:
        print(f"  accuracy, argmax_y log p(x|y) + log p(y){matched}: {report['accuracy']:.4f}")
    if "accuracy_guide" in report:
        print(f"  accuracy of the guide's classifier, argmax_y q(y|x){matched}: {report['accuracy_guide']:.4f}")
    if "nll_by_type" in report:  # which columns the model explains poorly
        print("  by column type, -E[log p(x_type | z)] under the posterior, per row (share; observed cells per row):")
        for kind, nats in report["nll_by_type"].items():
            print(f"    {kind:<12}{nats:10.3f}   ({report['nll_share_by_type'][kind]:6.1%}; "
                  f"{report['observed_cells_by_type'][kind]:.1f} cells)")
    print(f"written to {out}")


def _output_file(args: argparse.Namespace, kinds: dict[str, str] | None = None, default: Path | None = None) -> Path:
    """``--out`` (or ``default``), refused unless it ends in a suffix of ``kinds`` (each with what it writes; any
    suffix without), its folder exists and takes files, and it is no folder itself."""
    out = Path(args.out or default)
    if kinds and out.suffix not in kinds:
        *others, last = (f"{suffix} ({kind})" for suffix, kind in kinds.items())
        raise ValueError(f"--out {out} must end in {', '.join(others)} or {last}")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    if out.is_dir():
        raise ValueError(f"{out} is a folder, not a file; remove it or write elsewhere with --out FILE")
    if why := cannot_write(out.parent):
        raise ValueError(f"cannot write {out} ({why}); write it elsewhere with --out FILE")
    return out


def _sample(args: argparse.Namespace) -> None:
    out = _output_file(args, {".png": "a picture grid", ".npy": "an (N, D) array", ".csv": "the same as text",
                              ".parquet": "a table's rows"})
    check_positive(args, "n")
    if out.suffix == ".png" and args.n > plots.MAX_GRID_IMAGES:
        raise ValueError(f"--n {args.n} is too many images for one readable .png grid (at most "
                         f"{plots.MAX_GRID_IMAGES}); write them to an .npy file instead, any number fits")
    run = load_run(args.run_dir, data=False, metrics=False)
    vae, image_shape, likelihood = run.vae, run.vae.config.image_shape, run.vae.config.likelihood
    if out.suffix == ".parquet" and not isinstance(vae, TableVAE):
        raise ValueError(f"--out {out}: a .parquet file holds a table's rows, and {args.run_dir} models images; "
                         f"write the samples to an .npy or .csv file")
    if out.suffix == ".png" and (plots.is_table(image_shape) or args.binary):
        why = "a .png grid shows the means, not --binary draws" if args.binary else plots.TABLE
        raise ValueError(f"--out {out}: {why}; write the samples to an .npy or .csv file")
    if args.binary and likelihood != "bernoulli":
        raise ValueError(f"--binary draws Bernoulli pixels, and {args.run_dir} has the {likelihood} likelihood; "
                         f"leave --binary out to write its means")
    if args.label is not None and not vae.conditional:
        raise ValueError(f"--class needs a conditional model, and {args.run_dir} was trained without labels; "
                         f"train one with `pyrovae train --conditional`")
    if args.label is not None:
        vae.check_labels(torch.tensor([args.label]), "--class")
    if isinstance(vae, TableVAE):
        return _sample_rows(vae, args.n, out, args.seed)
    if out.suffix == ".png":
        plots.save(plots.samples_figure(vae, image_shape, n=args.n, seed=args.seed, label=args.label), out)
    else:
        torch.manual_seed(args.seed)
        _save_samples(vae, args.n, out, args.label, SAMPLE_CHUNK, args.binary)
    of_class = f" of class {args.label}" if args.label is not None else ""
    print(f"wrote {args.n} samples{of_class} to {out}")


def _sample_rows(vae: TableVAE, n: int, out: Path, seed: int) -> None:
    """Write ``n`` rows drawn from a table model: in the table's own columns (.csv, .parquet), or encoded (.npy)."""
    pyro.set_rng_seed(seed)
    rows = vae.sample_rows(n)
    if out.suffix == ".npy":
        _write_rows(out, [rows.numpy()], n, rows.shape[1])
    else:
        write_atomically(out, table_bytes(vae.schema.decode(rows), out.suffix))
    print(f"wrote {n} rows drawn from the model to {out}")


def _impute(args: argparse.Namespace) -> None:
    out = _output_file(args, {".csv": "the table as text", ".parquet": "the table, typed"})
    check_positive(args, "num_samples", "draws")
    vae = load_run(args.run_dir, data=False, metrics=False).vae
    if not isinstance(vae, TableVAE):
        raise ValueError(f"{args.run_dir} was not trained on a .csv or .parquet table, and impute fills the missing "
                         f"cells of one; train a run on the table first: pyrovae train --dataset TABLE.csv")
    table = read_table(args.dataset)
    missing = int(table.isna().sum().sum())
    print(f"imputing {missing} missing cells of {len(table)} rows of {args.dataset}, K={args.num_samples} draws per "
          f"row" + (f", {args.draws} imputations" if args.draws else ""))
    pyro.set_rng_seed(args.seed)
    filled = impute(vae, table, args.num_samples, args.draws, progress=not args.no_progress, name=args.dataset)
    from_csv = out.suffix == ".csv" and Path(args.dataset).suffix.lower() == ".csv"  # its cells keep their text
    source = args.dataset if from_csv else None
    write_atomically(out, table_bytes(filled, out.suffix, source))
    print(f"wrote {len(filled)} rows, {missing * (args.draws or 1)} cells filled, to {out}")


@torch.no_grad()
def _save_samples(vae: VAE, n: int, path: Path, label: int | None, chunk: int, binary: bool = False) -> None:
    """Write ``n`` decoded prior draws, their means or with ``binary`` a Bernoulli draw of them, ``chunk`` at a
    time (any ``n`` fits in memory)."""
    labels = plots.sample_labels(vae, n, label)

    def draws() -> Iterator[np.ndarray]:
        for start in range(0, n, chunk):
            means = vae.sample(min(chunk, n - start), None if labels is None else labels[start:start + chunk])
            yield (torch.bernoulli(means) if binary else means).numpy()

    _write_rows(path, draws(), n, vae.x_dim)


def _write_rows(path: Path, chunks: Iterable[np.ndarray], n: int, width: int) -> None:
    """Write ``n`` rows of ``width`` numbers, given in ``chunks`` of rows, to the ``.npy`` or ``.csv`` file ``path``,
    whole or not at all; refused before any chunk is computed if the file cannot fit in its folder's free space."""
    npy, header = path.suffix == ".npy", io.BytesIO()
    if npy:
        fields = np.lib.format.header_data_from_array_1_0(np.empty((0, width), np.float32))
        np.lib.format.write_array_header_1_0(header, {**fields, "shape": (n, width)})
    size = len(header.getvalue()) + n * width * (4 if npy else 2)  # a .csv value takes 2 bytes or more
    free = shutil.disk_usage(path.parent).free
    if size > free:
        raise ValueError(f"--n {n} rows take {'' if npy else 'at least '}{size:,} bytes in {path.name}, and "
                         f"{path.parent} has {free:,} free; lower --n or write them elsewhere with --out FILE")
    with atomic_file(path, size if npy else None) as file:
        file.write(header.getvalue())
        for rows in chunks:
            rows = rows.astype(np.float32, copy=False)
            if npy:
                file.write(rows.tobytes())
            else:
                np.savetxt(file, rows, fmt="%.9g", delimiter=",")


def _encode(args: argparse.Namespace) -> None:
    out = _output_file(args, {".npy": "one record per example", ".npz": "one array per field"})
    check_positive(args, "limit")
    loaded = load_run(args.run_dir, metrics=False)
    split = getattr(loaded.data, args.split)
    x, y = split.x[:args.limit], split.y[:args.limit]
    loc, scale = posteriors(loaded.vae, as_floats(x))
    fields = {"loc": loc.numpy(), "scale": scale.numpy()}
    if loaded.data.num_classes >= 2:  # labels hidden from a few-label run's training split stay -1
        fields["y"] = y.numpy()
    buffer = io.BytesIO()
    if out.suffix == ".npz":
        np.savez(buffer, **fields)
    else:
        records = np.empty(len(x), dtype=[(name, array.dtype, array.shape[1:]) for name, array in fields.items()])
        for name, array in fields.items():
            records[name] = array
        np.save(buffer, records)
    write_atomically(out, buffer.getvalue())
    print(f"wrote q(z|x) of {len(x)} {args.split} examples ({', '.join(fields)}) to {out}")


def _reconstruct(args: argparse.Namespace) -> None:
    out = _output_file(args, {".png": "originals above reconstructions", ".npy": "an (N, D) array",
                              ".csv": "the same as text"})
    check_positive(args, "n")
    n = args.n or (8 if out.suffix == ".png" else None)
    if out.suffix == ".png" and n > plots.MAX_GRID_IMAGES // 2:
        raise ValueError(f"--n {n} is too many images for one readable .png (at most {plots.MAX_GRID_IMAGES // 2}); "
                         f"write them to an .npy file instead")
    loaded = load_run(args.run_dir, metrics=False)
    split, image_shape = getattr(loaded.data, args.split), loaded.vae.config.image_shape
    x, y = as_floats(split.x[:n]), split.y[:n]
    y = None if loaded.vae.classifier is not None else y  # as the run's picture: a classifier's own labels
    if out.suffix == ".png":
        if plots.is_table(image_shape):
            raise ValueError(f"--out {out}: {plots.TABLE}; write the reconstructions to an .npy or .csv file")
        plots.save(plots.reconstructions_figure(loaded.vae, x, image_shape, n=len(x), y=y), out)
    else:
        labels = [None] * len(x) if y is None else y.split(SAMPLE_CHUNK)
        rows = (loaded.vae.reconstruct(*batch).numpy() for batch in zip(x.split(SAMPLE_CHUNK), labels))
        _write_rows(out, rows, len(x), loaded.vae.x_dim)
    print(f"wrote {len(x)} reconstructions of {args.split} examples to {out}")


def _plot(args: argparse.Namespace) -> None:
    if args.tensorboard:
        check_installed()
    loaded = load_run(args.run_dir, resolve_device(args.device))
    vae, data, image_shape = loaded.vae, loaded.data, loaded.vae.config.image_shape
    run = RunDir(args.run_dir)
    options = plots.PictureOptions(tsne=args.tsne, quantiles=args.quantiles, seed=args.seed,
                                   interpolate=args.interpolate and tuple(args.interpolate),
                                   elbo=run.settings(TrainConfig, "train").elbo, color_by=args.color_by)
    folder = Path(args.out_dir or args.run_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        why = cannot_write(folder)
    except OSError as error:
        why = error.strerror
    if why:
        raise ValueError(f"cannot write pictures into {folder} ({why}); draw them elsewhere with --out DIR")
    into_run = folder.resolve() == run.path.resolve()
    with RunWriter(run, setting="out_dir").writing() if into_run else contextlib.nullcontext():
        written = plots.save_run_pictures(vae, data.test, image_shape, folder, metrics=loaded.metrics,
                                          only=args.only, options=options)
        print(f"wrote {', '.join(path.name for path in written)} to {folder}")
        if args.tensorboard:
            events = write_run_events(folder, vae, data.val, loaded.metrics, image_shape)
            print(f"wrote TensorBoard events to {events}; view them with `tensorboard --logdir {events}`")




COMMANDS = {"train": _train, "evaluate": _evaluate, "sample": _sample, "encode": _encode,
            "reconstruct": _reconstruct, "impute": _impute, "plot": _plot}
