"""Datasets as device-resident tensors: loading, binarization and batching.

Every split is a pair of tensors ``x`` (N, D) and ``y`` (N,) kept on the training device, so a batch is a slice of
a shuffled index and training makes no host-to-device copy per step. 8-bit pixels stay uint8 (a quarter of
float32's memory) and are scaled to [0, 1] where they are used (:func:`as_floats`).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import torch
from torch.utils.data import Subset

from pyrovae.data import tables
from pyrovae.data.idx import DataNotFoundError as DataNotFoundError  # pyrovae.DataNotFoundError
from pyrovae.data.idx import find_idx_files, read_idx
from pyrovae.data.sources import (
    TORCHVISION_PREFIX,
    Source,
    arrays_of,
    check_fits,
    checked_labels,
    labels_of,
    materialize,
    read_source,
    resized,
)
from pyrovae.data.splits import held_out_test, shuffled_cut, validation_indices
from pyrovae.data.streaming import MEMORY_SHARE, Storage, StreamedSplit, default_workers, streams
from pyrovae.memory import free_bytes, in_bytes
from pyrovae.settings import SettingError, check_choices, setting

if TYPE_CHECKING:
    import pandas as pd

DATASETS = ("digits", "mnist", "fashion-mnist")
"""The bundled datasets' names; ``dataset`` also takes a path or ``torchvision:NAME``."""
Binarize = Literal["none", "static", "dynamic"]
BINARIZE = get_args(Binarize)
BINARIZE_SEED = 1234
"""Seed of the one fixed Bernoulli draw of static training data and of every evaluation split."""
HIDDEN = -1
"""The label of a training image whose label is hidden (``labeled=N``), as in scikit-learn."""
log = logging.getLogger(__name__)


@dataclasses.dataclass
class DataConfig:
    """Which data to load and how to present it (saved in ``config.json``)."""

    dataset: str = setting("digits", "digits is bundled with scikit-learn (no download); mnist and fashion-mnist "
                                     "are read from IDX files or downloaded; or your own data: a .npy/.npz file of "
                                     "(N, D), (N, H, W) or (N, C, H, W) arrays (uint8 pixels or floats, labels "
                                     "under 'y'), a .csv or .parquet table (see column_types), a folder of images "
                                     "in class subfolders, or torchvision:NAME (any torchvision dataset class, e.g. "
                                     "torchvision:CIFAR10)", metavar="NAME|PATH")
    data_dir: str | None = setting(None, "folder holding the four IDX files of mnist or fashion-mnist "
                                         "(train-images-idx3-ubyte, ...; .gz or not), or the root of a "
                                         "torchvision:NAME dataset", metavar="DIR")
    image_size: int | None = setting(None, "resize (the shorter side) and centre-crop every image to S x S pixels",
                                     metavar="S")
    binarize: Binarize | None = setting(None, "dynamic: a fresh Bernoulli draw of every training batch; static: "
                                              "one fixed draw; none: keep grayscale (the Bernoulli likelihood is "
                                              "then unnormalized) (default: dynamic for likelihood='bernoulli', none "
                                              "for the others)")
    val_fraction: float = setting(0.1, "fraction of the training images held out for validation")
    download: bool = setting(True, "download mnist or fashion-mnist when its files are not found")
    labeled: int | None = setting(None, "keep N training labels, drawn balanced over the classes, and hide the "
                                        "rest (0: none, to cluster); for the conditional model. Default: all",
                                  metavar="N")
    label_seed: int = setting(0, "seed of the draw of the labeled=N labels kept")
    storage: Storage = setting("auto", "memory: hold the training images in memory (uint8 pixels); stream: read "
                                       "them batch by batch from their files (a folder of images or a .npy file) "
                                       "by DataLoader workers; auto: stream only what does not fit")
    memory_limit: float | None = setting(None, "with storage=auto, hold the training images in memory only if they "
                                               "take at most GIB gibibytes (default: half the free memory of this "
                                               "machine or of the training GPU)", metavar="GIB")
    workers: int | None = setting(None, "DataLoader worker processes that read streamed batches (default: one per "
                                        "spare core, at most 4)", metavar="N")
    column_types: str | None = setting(None, "the types of a .csv or .parquet table's columns where the inferred ones "
                                             "do not fit, as NAME=TYPE,NAME=TYPE; types: real, positive, count, "
                                             "binary, categorical", metavar="NAME=TYPE,...")

    def __post_init__(self) -> None:
        check_choices(self)
        is_path = self.dataset not in DATASETS and not self.dataset.startswith(TORCHVISION_PREFIX)
        if is_path and not ("/" in self.dataset or Path(self.dataset).suffix or Path(self.dataset).exists()):
            close = difflib.get_close_matches(self.dataset, DATASETS, n=1)
            guess = f"; did you mean {close[0]!r}?" if close else ""
            raise SettingError("dataset", f"unknown dataset {self.dataset!r}: choose {', '.join(DATASETS)}, a "
                                          f".npy/.npz/.csv/.parquet file, an image folder, or torchvision:NAME{guess}")
        if (self.dataset == "digits" or is_path) and self.data_dir is not None:
            what = ("the digits dataset is bundled with scikit-learn and reads no files" if self.dataset == "digits"
                    else f"dataset={self.dataset!r} names its own files")
            raise SettingError("data_dir", f"{what}; drop data_dir=DIR, or use it with dataset='mnist', "
                                           f"dataset='fashion-mnist' or torchvision:NAME")
        if self.image_size is not None and self.image_size < 1:
            raise SettingError("image_size", f"image_size must be at least 1 pixel, got {self.image_size}")
        if not 0 < self.val_fraction < 1:
            raise SettingError("val_fraction",
                               f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction}")
        if self.labeled is not None and self.labeled < 0:
            raise SettingError("labeled", f"labeled counts the labels kept and cannot be negative, got {self.labeled}")
        if self.memory_limit is not None and not self.memory_limit > 0:
            raise SettingError("memory_limit", f"memory_limit is a size in GiB and must be positive, got "
                                               f"{self.memory_limit}")
        if self.workers is not None and self.workers < 0:
            raise SettingError("workers", f"workers counts processes and cannot be negative, got {self.workers}")
        tables.check_table_settings(self)
        if self.storage == "stream" and self.binarize == "static":
            raise SettingError("binarize", "binarize='static' draws every training image once, in memory; with "
                                           "storage='stream' use binarize='dynamic' (a fresh draw per batch)",
                               others=("storage",))


@dataclasses.dataclass
class Split:
    """Flattened images ``x`` (N, D), uint8 pixels or finite floats, and labels ``y`` (N,); checked on creation.
    With ``table``, ``x`` holds the encoded rows of a table, ``NaN`` where a cell is missing."""

    x: torch.Tensor
    y: torch.Tensor
    table: bool = False

    def __post_init__(self) -> None:
        check_pixels(self.x, "rows" if self.table else "images", missing=self.table)
        if self.y.shape != (len(self.x),):
            raise ValueError(f"{len(self.x)} images need {len(self.x)} labels, got labels of shape "
                             f"{tuple(self.y.shape)}")

    @classmethod
    def from_arrays(cls, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray | None = None) -> Split:
        """Images ``(N, ...)`` flattened to ``(N, D)``, uint8 kept, others as float32; missing labels become 0."""
        x = torch.as_tensor(x)
        x = (x if x.dtype == torch.uint8 else x.float()).reshape(len(x), -1)
        y = torch.zeros(len(x), dtype=torch.long) if y is None else torch.as_tensor(y, dtype=torch.long)
        return cls(x, y)

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device | str) -> Split:
        return dataclasses.replace(self, x=self.x.to(device), y=self.y.to(device))

    def read(self, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        return (self.x[index] for index in batches)

    def storage(self) -> str:
        dtype = str(self.x.dtype).removeprefix("torch.")
        return f"held in memory on {self.x.device} ({in_bytes(self.x.nbytes)} as {dtype})"


@dataclasses.dataclass
class Dataset:
    """Train, validation and test splits; with ``dynamic_binarization`` every training batch is a fresh Bernoulli
    draw from the grayscale images (Burda et al. 2015)."""

    name: str
    image_shape: tuple[int, int, int]
    train: Split | StreamedSplit
    val: Split
    test: Split
    dynamic_binarization: bool = False
    config: DataConfig | None = None
    provenance: dict[str, Any] | None = None
    """What was read, as :func:`pyrovae.data.sources.read_source` describes it (a run saves it in ``config.json``)."""
    schema: tables.TableSchema | None = None
    """How a table's columns are encoded (None for images)."""

    @property
    def columns(self) -> tuple[str, ...] | None:
        """A table's column types as the model reads them (``ModelConfig.columns``); None for images."""
        return None if self.schema is None else self.schema.specs()

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.train.y, self.val.y, self.test.y]).max().item()) + 1

    def to(self, device: torch.device | str) -> Dataset:
        return dataclasses.replace(self, train=self.train.to(device), val=self.val.to(device),
                                   test=self.test.to(device))

    def shuffled_order(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One epoch's random order of the training examples, drawn from ``generator`` (a CPU one) or torch's."""
        if generator is None:
            return torch.randperm(len(self.train), device=self.train.y.device)
        return torch.randperm(len(self.train), generator=generator).to(self.train.y.device)

    def batches(self, batch_size: int, shuffle: bool = True, order: torch.Tensor | None = None,
                first: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training minibatches ``(x, y)`` as floats, binarized afresh if dynamic, along ``order`` (perhaps one
        process's shard); ``first`` skips that many batches, to finish an interrupted epoch."""
        if order is None:
            order = self.shuffled_order() if shuffle else torch.arange(len(self.train), device=self.train.y.device)
        indices = order[first * batch_size:].split(batch_size)
        for index, x in zip(indices, self.train.read(indices)):
            x = as_floats(x)
            yield (binarize_afresh(x) if self.dynamic_binarization else x), self.train.y[index]

    def observed_train_images(self) -> torch.Tensor:
        """The training images held in memory as the model sees them: floats, one draw if binarized dynamically."""
        if isinstance(self.train, StreamedSplit):
            raise ValueError("streamed training images are never all in memory; read them batch by batch with "
                             "Dataset.batches, or load them with storage='memory'")
        x = as_floats(self.train.x)
        return binarize_afresh(x) if self.dynamic_binarization else x


def as_floats(x: torch.Tensor) -> torch.Tensor:
    """Images as floats: uint8 pixels scaled to [0, 1], floats as they are."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def check_pixels(x: torch.Tensor, name: str = "images", missing: bool = False) -> None:
    """Refuse anything but (N, D) uint8 pixels or finite floats, NaN too if ``missing``: the likelihood checks more."""
    if not (x.is_floating_point() or x.dtype == torch.uint8) or x.ndim != 2:
        raise ValueError(f"{name} must be a tensor of flattened images (N, D), uint8 or float, "
                         f"got {x.dtype} of shape {tuple(x.shape)}")
    if x.is_floating_point() and not (torch.isfinite(x) | x.isnan() if missing else torch.isfinite(x)).all():
        what = "infinite" if missing else "NaN or infinite"
        raise ValueError(f"{name} contain {what} values; clean or drop those examples")


def check_unit_interval(x: torch.Tensor, name: str = "images") -> None:
    """Refuse values outside [0, 1], as binarizing needs."""
    if len(x) and x.is_floating_point() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name} have values in [{x.min().item():g}, {x.max().item():g}]; "
                         f"pixels must lie in [0, 1] (divide uint8 images by 255)")


def binarize_afresh(x: torch.Tensor) -> torch.Tensor:
    """A fresh Bernoulli draw of every pixel as u < x, u ~ U[0, 1): ``torch.bernoulli``'s law, but vectorized."""
    return (torch.rand_like(x) < x).to(x.dtype)


def binarize_once(x: torch.Tensor, seed: int = BINARIZE_SEED) -> torch.Tensor:
    """One fixed Bernoulli draw of grayscale pixels, the same on every machine for a seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=generator).to(x.device)


def from_arrays(train_x: torch.Tensor | np.ndarray | torch.utils.data.Dataset | pd.DataFrame,
                train_y: torch.Tensor | np.ndarray | None = None,
                test_x: torch.Tensor | np.ndarray | torch.utils.data.Dataset | pd.DataFrame | None = None,
                test_y: torch.Tensor | np.ndarray | None = None, *,
                image_shape: Sequence[int] | None = None, binarize: str = "none",
                val_fraction: float = 0.1, name: str = "arrays", labeled: int | None = None,
                label_seed: int = 0) -> Dataset:
    """A :class:`Dataset` from in-memory images ``(N, H, W)``, ``(N, C, H, W)``, a table ``(N, D)``, or torch
    datasets of ``(image, label)`` pairs; a pandas DataFrame goes to :func:`from_table`.

    Pixels are uint8 or floats (in [0, 1] for the Bernoulli-type likelihoods and ``binarize``). The validation
    split is a fixed random ``val_fraction`` of the training images; without ``test_x`` it is the test split too.
    """
    DataConfig(binarize=binarize, val_fraction=val_fraction, labeled=labeled)  # validates them
    if tables.is_frame(train_x):
        if any(value is not None for value in (train_y, test_y, image_shape, labeled)) or binarize != "none":
            raise ValueError("a DataFrame is a table without labels: pass it alone, or with test_x, val_fraction, name")
        return from_table(train_x, test_x, val_fraction=val_fraction, name=name)
    if isinstance(train_x, torch.utils.data.Dataset):
        train_x, train_y = arrays_of(train_x)
    if isinstance(test_x, torch.utils.data.Dataset):
        test_x, test_y = arrays_of(test_x)
    train_x = _images_in(train_x, "the training data")
    test_x = None if test_x is None else _images_in(test_x, "the test data")
    examples = len(train_x) + (0 if test_x is None else len(test_x))
    train = Split.from_arrays(train_x, checked_labels(train_y, len(train_x), "train_y", examples))
    image_shape = tuple(int(s) for s in (image_shape or _infer_image_shape(train_x.shape)))
    keep, held = validation_indices(len(train), val_fraction)
    val = Split(train.x[held], train.y[held])
    test = val if test_x is None else Split.from_arrays(test_x, checked_labels(test_y, len(test_x), "test_y",
                                                                                 examples))
    return _assemble(name, image_shape, Split(train.x[keep], train.y[keep]), val, test, binarize, labeled, label_seed)


def from_table(frame: pd.DataFrame, test: pd.DataFrame | None = None, *,
               column_types: Mapping[str, str] | str | None = None, schema: tables.TableSchema | None = None,
               val_fraction: float = 0.1, name: str = "the table") -> Dataset:
    """A :class:`Dataset` of a table's rows, encoded by ``schema`` or by one inferred from the training rows with
    ``column_types`` (:func:`~pyrovae.data.tables.infer_schema`). Without ``test``, the test and validation rows are
    held out as a ``.npy`` table's are: fixed random fractions."""
    DataConfig(val_fraction=val_fraction)  # validates it
    tables.check_frame(frame, name)
    if test is not None:
        tables.check_frame(test, f"the test rows of {name}", rows=False)
    held_out, rest = held_out_test(len(frame)) if test is None else (np.arange(0), np.arange(len(frame)))
    keep, held = validation_indices(len(rest), val_fraction)
    train, val = rest[keep.numpy()], rest[held.numpy()]
    schema = schema or tables.infer_schema(frame, train, column_types, name)
    x = schema.encode(frame, name)
    test_x = x[held_out] if test is None else schema.encode(test, f"the test rows of {name}")
    splits = (Split(rows, torch.zeros(len(rows), dtype=torch.long), table=True) for rows in (x[train], x[val], test_x))
    return Dataset(name, (1, 1, len(schema.columns)), *splits, schema=schema)


def _assemble(name: str, image_shape: tuple[int, ...], train: Split | StreamedSplit, val: Split, test: Split,
              binarize: str, labeled: int | None, label_seed: int) -> Dataset:
    """The :class:`Dataset` of three splits, binarized as ``binarize`` says and with ``labeled`` labels kept."""
    if binarize != "none" and isinstance(train, Split):
        check_unit_interval(train.x, f"images to binarize (binarize={binarize!r})")
    if binarize != "none":
        val, test = (Split(binarize_once(as_floats(s.x)), s.y) for s in (val, test))
    if binarize == "static":
        train = Split(binarize_once(as_floats(train.x)), train.y)
    data = Dataset(name, image_shape, train, val, test, dynamic_binarization=binarize == "dynamic")
    y = torch.cat([train.y, val.y, test.y])
    if empty := (torch.bincount(y[y >= 0]) == 0).nonzero()[:, 0].tolist():  # labels that skip classes
        n, shown = data.num_classes, ", ".join(map(str, empty[:6])) + (", ..." if len(empty) > 6 else "")
        log.warning(f"the labels of {name} use {n - len(empty)} of {n} classes (0..{n - 1}): classes {shown} have "
                    f"no example, and a conditional model gets all {n}; number the classes 0..{n - len(empty) - 1}")
    if labeled is not None:
        data.train = hide_labels(data.train, labeled, data.num_classes, label_seed)
    return data


def _images_in(x: Any, what: str) -> torch.Tensor:
    """``x`` as a tensor of images or rows, or a ValueError saying what data may be."""
    kinds = ("a Dataset, a tensor or array of images (N, H, W) or (N, C, H, W) or of rows (N, D), or a torch "
             "dataset of (image, label) pairs")
    try:
        images = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        got = type(x).__name__ + (f" of {x.dtype}" if isinstance(x, np.ndarray) else "")
        if isinstance(x, (str, Path)):
            got += f"; load a dataset by name with load_dataset(DataConfig(dataset={str(x)!r}))"
        raise ValueError(f"{what} must be {kinds}, got {got}") from None
    if images.ndim not in (2, 3, 4) or images.numel() == 0 or images.is_complex():
        raise ValueError(f"{what} has shape {tuple(images.shape)} ({images.dtype}); it must be {kinds}, "
                         f"non-empty, of real numbers")
    return images


def _infer_image_shape(shape: torch.Size) -> tuple[int, int, int]:
    if len(shape) == 4:
        return tuple(shape[1:])
    if len(shape) == 3:
        return (1, shape[1], shape[2])
    side = int(round(shape[1] ** 0.5))  # rows (N, D): square images if D is a square
    return (1, side, side) if side * side == shape[1] else (1, 1, shape[1])


def hide_labels(split: Split | StreamedSplit, labeled: int, num_classes: int, seed: int) -> Split | StreamedSplit:
    """``split`` with all but ``labeled`` labels, balanced over the classes, written :data:`HIDDEN`."""
    if num_classes < 2:
        raise SettingError("labeled", f"labeled={labeled} keeps some labels of a labelled dataset, and this one has "
                                      f"no labels (all its images are of one class); leave labeled unset")
    if labeled > len(split):
        raise SettingError("labeled", f"labeled={labeled} is more labels than the {len(split)} training images; "
                                      f"choose at most {len(split)}")
    if labeled % num_classes:
        below = labeled - labeled % num_classes
        raise SettingError("labeled", f"labeled={labeled} cannot be drawn balanced over {num_classes} classes: "
                                      f"choose a multiple of {num_classes}, e.g. {below or num_classes} or "
                                      f"{below + num_classes}")
    per_class = labeled // num_classes
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for label in range(num_classes):
        members = torch.nonzero(split.y.cpu() == label)[:, 0]
        if len(members) < per_class:
            raise SettingError("labeled", f"labeled={labeled} needs {per_class} images of each class, but class "
                                          f"{label} has only {len(members)} training images; choose at most "
                                          f"labeled={len(members) * num_classes}")
        keep.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    y = torch.full_like(split.y, HIDDEN)
    kept = torch.cat(keep).to(split.y.device)
    y[kept] = split.y[kept]
    return dataclasses.replace(split, y=y)


def load_dataset(config: DataConfig | torch.utils.data.Dataset | torch.Tensor | np.ndarray | pd.DataFrame,
                 test: torch.utils.data.Dataset | torch.Tensor | np.ndarray | pd.DataFrame | None = None,
                 device: torch.device | str = "cpu", schema: tables.TableSchema | None = None) -> Dataset:
    """Load the dataset ``config`` names, on the CPU; ``device`` is where training will hold it, for
    ``storage="auto"``. In place of a config, training and ``test`` images go to :func:`from_arrays`, a DataFrame
    to :func:`from_table`. A table is encoded by ``schema`` (a run's) if given, else by the one inferred."""
    if tables.is_frame(config):
        return from_table(config, test, schema=schema)
    if not isinstance(config, DataConfig):
        return from_arrays(config, test_x=test)
    if tables.is_table_file(config.dataset):
        frame = tables.read_table(config.dataset)
        data = from_table(frame, column_types=config.column_types, schema=schema, val_fraction=config.val_fraction,
                          name=config.dataset)
        return dataclasses.replace(data, config=config, provenance=tables.table_provenance(config.dataset, frame))
    if config.binarize is None:  # no likelihood to ask (pyrovae.configure sets it from one): a fresh draw per batch
        config = dataclasses.replace(config, binarize="dynamic")
    if config.dataset not in DATASETS:
        source = read_source(config.dataset, config.data_dir, config.image_size, config.download)
        return _from_source(source, config, torch.device(device))
    if config.storage == "stream":
        raise SettingError("storage", f"the bundled {config.dataset} is held in memory; storage='stream' reads a "
                                      f"folder of images or a .npy file")
    if config.dataset == "digits":
        train_x, train_y, test_x, test_y = _load_digits()
    else:
        files = find_idx_files(config.dataset, config.data_dir, config.download)
        train_x, train_y = read_idx(files["train_images"]), read_idx(files["train_labels"])
        test_x, test_y = read_idx(files["test_images"]), read_idx(files["test_labels"])
        for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise ValueError(
                    f"the {split} IDX files do not match: images {images.shape}, labels "
                    f"{labels.shape}; expected (N, H, W) images and N labels")
    if config.image_size is not None:
        train_x, test_x = resized(train_x, config.image_size), resized(test_x, config.image_size)
    data = from_arrays(train_x, train_y, test_x, test_y, binarize=config.binarize, val_fraction=config.val_fraction,
                       name=config.dataset, labeled=config.labeled, label_seed=config.label_seed)
    return dataclasses.replace(data, config=config)


def _from_source(source: Source, config: DataConfig, device: torch.device) -> Dataset:
    """A user's source, its training images in memory or streamed, as :func:`streams` chooses."""
    keep, held = (index.numpy() for index in validation_indices(len(source.train), config.val_fraction))
    train_examples = Subset(source.train, keep)
    if config.image_size is not None:  # the validation and test images are resized into memory, even when streaming
        check_fits(len(held) + len(source.test), source.example_shape[0], config.image_size, source.dtype.itemsize)
    free = min(free_bytes(torch.device("cpu")), free_bytes(device))
    limit = MEMORY_SHARE * free if config.memory_limit is None else config.memory_limit * 2**30
    workers = default_workers() if config.workers is None else config.workers
    streamed = streams(config.storage, len(keep) * source.bytes_per_example(), limit, free,
                       source.streamable and source.dtype == np.uint8, workers)

    def split(examples: torch.utils.data.Dataset) -> Split:
        return Split.from_arrays(materialize(examples, config.dataset), labels_of(examples))

    val, test = split(Subset(source.train, held)), split(source.test)
    train = (StreamedSplit(train_examples, torch.as_tensor(labels_of(train_examples)), workers,
                           origin=config.dataset) if streamed else split(train_examples))
    table = len(source.example_shape) == 1  # rows of numbers, not images
    image_shape = (1, 1, *source.example_shape) if table else source.example_shape
    data = _assemble(config.dataset, image_shape, train, val, test, config.binarize, config.labeled, config.label_seed)
    return dataclasses.replace(data, config=config, provenance=source.provenance)


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (values 0..16), split 1497 train / 300 test by a fixed shuffle."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    train, test = shuffled_cut(len(images), len(images) - 300)
    return images[train], digits.target[train], images[test], digits.target[test]
