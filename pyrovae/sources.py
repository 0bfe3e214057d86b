"""Users' own data: ``.npy``/``.npz`` arrays, folders of images, and torchvision's dataset classes.

``--dataset`` takes, besides the bundled names, a path or ``torchvision:NAME``; :func:`read_source`
reads it into arrays: images ``(N, C, H, W)`` (or a table ``(N, D)``) of uint8 pixels or
floats, and integer labels. Image sources are resized and centre-cropped to ``image_size``
by torchvision's transforms. A source without a test split of its own gets one held out
with a fixed seed.

Every source also says what was read (:attr:`Source.provenance`: the path, shapes, dtype and
a SHA-256 of the pixels and labels). A run saves it in ``config.json``, and resuming or
evaluating compares it with the data read then (:func:`check_unchanged`), so a run never
continues on data that changed under it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyrovae.settings import SettingError

TORCHVISION_PREFIX = "torchvision:"
TEST_FRACTION = 0.1
"""The share of a source without a test split of its own that is held out as its test split."""
HOLD_OUT_SEED = 0
"""Seed of that hold-out: the same split on every machine."""
ARRAY_SHAPES = "(N, D), (N, H, W) or (N, C, H, W)"


class SourceChanged(ValueError):
    """The data a run was trained on are not the data read now."""


@dataclasses.dataclass
class Source:
    """A dataset as arrays: ``x`` images (uint8 pixels or floats) and ``y`` integer labels, per split."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    provenance: dict[str, Any]


def read_source(dataset: str, data_dir: str | None = None, image_size: int | None = None,
                download: bool = True) -> Source:
    """Read the source ``dataset`` names: ``torchvision:NAME``, a ``.npy``/``.npz`` file, or a folder of images."""
    if dataset.startswith(TORCHVISION_PREFIX):
        return read_torchvision(dataset.removeprefix(TORCHVISION_PREFIX), data_dir, image_size, download)
    path = Path(dataset).expanduser()
    if path.suffix in (".npy", ".npz"):
        source = read_arrays(path)
        if image_size is not None:
            source.train_x, source.test_x = resized(source.train_x, image_size), resized(source.test_x, image_size)
        return source
    if path.is_dir():
        return read_image_folder(path, image_size)
    raise FileNotFoundError(f"dataset={dataset!r} is neither a bundled dataset (digits, mnist, fashion-mnist), "
                            f"nor a .npy/.npz file, nor an existing folder of images, nor torchvision:NAME")


def read_arrays(path: Path) -> Source:
    """Images or a table from a ``.npy`` file (``x`` only) or a ``.npz`` file (``x`` and ``y``, or
    ``x_train``, ``y_train``, ``x_test``, ``y_test``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the path of a .npy or .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"cannot read {path}: {error}. A ragged array (rows of different lengths) is saved as "
                         f"objects; save one regular array of shape {ARRAY_SHAPES}") from None
    if isinstance(loaded, np.ndarray):
        arrays = {"x": loaded}
    else:
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    if "x_train" in arrays:
        train = _images(arrays["x_train"], f"{path}['x_train']"), _labels(arrays.get("y_train"), arrays["x_train"])
        if "x_test" not in arrays:
            raise ValueError(f"{path} has x_train but no x_test; save both splits, or one array under 'x'")
        test = _images(arrays["x_test"], f"{path}['x_test']"), _labels(arrays.get("y_test"), arrays["x_test"])
        _check_same_kind(train[0], test[0], path)
    elif "x" in arrays:
        x = _images(arrays["x"], f"{path}['x']" if path.suffix == ".npz" else str(path))
        train, test = _hold_out(x, _labels(arrays.get("y"), x))
    else:
        raise ValueError(f"{path} holds {', '.join(sorted(arrays)) or 'no arrays'}; name the images 'x' (and the "
                         f"labels 'y'), or save 'x_train', 'y_train', 'x_test' and 'y_test'")
    return _source(train, test, {"kind": "arrays", "path": str(path.resolve())})


def read_image_folder(path: Path, image_size: int | None) -> Source:
    """Images in class subfolders (``path/CLASS/IMAGE``), read by ``torchvision.datasets.ImageFolder``."""
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(path), transform=_image_transform(image_size))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path} holds no images in class subfolders ({error}); put each class's images "
                                f"into a subfolder: {path}/CLASS/IMAGE.png") from None
    if image_size is not None:
        check_fits(len(folder), 3, image_size, 1)
    x = _stack([image for image, _ in folder], str(path), image_size)
    labels = np.asarray(folder.targets, dtype=np.int64)
    return _source(*_hold_out(x, labels), {"kind": "image-folder", "path": str(path.resolve()),
                                           "classes": folder.classes})


def read_torchvision(name: str, data_dir: str | None, image_size: int | None, download: bool) -> Source:
    """A torchvision dataset class by name: its train and test splits where it has them, else a hold-out.

    The class's signature says what it takes: ``root``, ``train`` or ``split``, and ``download``
    are passed only where it takes them.
    """
    import torchvision.datasets

    names = [n for n in torchvision.datasets.__all__ if inspect.isclass(getattr(torchvision.datasets, n))]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        guess = f"; did you mean {', '.join(TORCHVISION_PREFIX + c for c in close)}?" if close else ""
        raise ValueError(f"torchvision has no dataset class {name!r}{guess} (see torchvision.datasets)")
    cls = getattr(torchvision.datasets, name)
    parameters = inspect.signature(cls).parameters
    required = [p.name for p in parameters.values() if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "root"]
    if required:
        raise ValueError(f"torchvision's {name} needs {', '.join(required)}, which pyrovae does not choose for you; "
                         f"load it in Python and hand its arrays to pyrovae.from_arrays")
    root = Path(data_dir or Path.home() / ".cache" / "pyrovae" / "torchvision").expanduser()

    def split(train: bool) -> Any:
        options: dict[str, Any] = {"transform": _image_transform(image_size)}
        if "root" in parameters:
            options["root"] = str(root)
        if "download" in parameters:
            options["download"] = download
        if "train" in parameters:
            options["train"] = train
        elif "split" in parameters:
            options["split"] = "train" if train else "test"
        try:
            return cls(**options)
        except (RuntimeError, OSError) as error:
            expected = _expected_files(cls, root)
            where = f"; it looks for {expected}" if expected else ""
            raise FileNotFoundError(f"torchvision's {name} could not read its files from {root} ({error}){where}; "
                                    f"run once where the network is reachable to download them, or put those "
                                    f"files there (data_dir=DIR)") from None

    has_splits = "train" in parameters or "split" in parameters
    train_set = split(True)
    if image_size is not None:
        check_fits(len(train_set), 3, image_size, 1)
    x = _stack([image for image, _ in train_set], f"{TORCHVISION_PREFIX}{name}", image_size)
    y = _labels_of(train_set)
    if has_splits:
        test_set = split(False)
        test = _stack([image for image, _ in test_set], f"{TORCHVISION_PREFIX}{name}", image_size), _labels_of(test_set)
        train = (x, y)
    else:
        train, test = _hold_out(x, y)
    provenance = {"kind": "torchvision", "class": name}
    if "root" in parameters:
        provenance["path"] = str(root.resolve())
    return _source(train, test, provenance)


def _expected_files(cls: type, root: Path) -> str:
    """The files a torchvision dataset class reads, as far as its class attributes tell."""
    names = []
    if getattr(cls, "base_folder", None):
        names.append(f"{root / cls.base_folder}/")
    if getattr(cls, "filename", None):
        names.append(str(root / cls.filename))
    for resource in getattr(cls, "resources", []):
        url = resource[0] if isinstance(resource, tuple) else str(resource)
        names.append(str(root / cls.__name__ / "raw" / url.rsplit("/", 1)[-1]))
    for entry in getattr(cls, "split_list", {}).values():
        names.append(str(root / entry[1]))
    return " or ".join(names[:2]) if getattr(cls, "filename", None) else ", ".join(names)


def arrays_of(dataset: torch.utils.data.Dataset, image_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, C, H, W)`` and integer labels from a torch ``Dataset`` of ``(image, label)`` pairs.

    Images may be PIL images, tensors or arrays; PIL images are converted (and, with
    ``image_size``, resized and cropped) by torchvision's transforms.
    """
    from PIL.Image import Image

    transform = _image_transform(image_size)
    images, labels = [], []
    for image, label in dataset:
        images.append(transform(image) if isinstance(image, Image) else np.asarray(image))
        labels.append(int(label))
    return _stack(images, type(dataset).__name__, image_size), np.asarray(labels, dtype=np.int64)


def check_unchanged(recorded: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse data whose provenance differs from what a run recorded, naming what changed."""
    changed = [key for key in ("shape", "dtype", "sha256") if recorded.get(key) != now.get(key)]
    if changed:
        what = "; ".join(f"{key} was {recorded.get(key)}, is now {now.get(key)}" for key in changed)
        raise SourceChanged(f"the data changed since this run was trained ({what}); restore the data the run "
                            f"was trained on, or train a new run")


def resized(x: np.ndarray, image_size: int) -> np.ndarray:
    """Images ``(N, H, W)`` or ``(N, C, H, W)`` resized (the shorter side) and centre-cropped to ``image_size``."""
    from torchvision.transforms.v2 import functional

    if x.ndim not in (3, 4):
        raise SettingError("image_size", f"image_size={image_size} resizes images, and these data are a table of "
                                         f"shape {x.shape}; drop image_size")
    images = torch.as_tensor(x if x.ndim == 4 else x[:, None])
    check_fits(len(images), images.shape[1], image_size, images.element_size())
    images = functional.center_crop(functional.resize(images, image_size, antialias=True), image_size)
    return images.numpy()


def check_fits(count: int, channels: int, image_size: int, bytes_per_value: int) -> None:
    """Refuse an ``image_size`` whose images would not fit in the free memory, before resizing any."""
    import torch

    from pyrovae.footprint import TooBig, free_bytes, in_bytes, where

    needed, free = count * channels * image_size ** 2 * (bytes_per_value + 4), free_bytes(torch.device("cpu"))
    if needed > free:  # the resized pixels, and their float copy for training
        raise TooBig("image_size", f"image_size={image_size} makes {count} images of {in_bytes(needed / count)} "
                                   f"each, about {in_bytes(needed)} in all; {where(torch.device('cpu'))} has "
                                   f"{in_bytes(free)} free; lower image_size")


def _image_transform(image_size: int | None) -> Any:
    """PIL image to a uint8 tensor (C, H, W), resized (shorter side) and centre-cropped to ``image_size``."""
    from torchvision.transforms import v2

    steps = [v2.PILToTensor()]
    if image_size is not None:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(steps)


def _stack(images: list, where: str, image_size: int | None) -> np.ndarray:
    """One (N, C, H, W) array from images of one size; a clear error for mixed sizes or an empty source."""
    if not images:
        raise ValueError(f"{where} holds no images; add images, or point dataset= at another source")
    arrays = [np.asarray(image) for image in images]
    sizes = sorted({a.shape for a in arrays})
    if len(sizes) > 1:
        shown = ", ".join("x".join(map(str, s)) for s in sizes[:4]) + (" ..." if len(sizes) > 4 else "")
        raise ValueError(f"{where} has images of {len(sizes)} sizes ({shown}, as channels x height x width); "
                         f"pass image_size=S to resize and crop them all to S x S")
    stacked = np.stack(arrays)
    return stacked[:, None] if stacked.ndim == 3 else stacked


def _labels_of(dataset: Any) -> np.ndarray:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [label for _, label in dataset]
    return np.asarray(targets, dtype=np.int64).reshape(-1)


def _images(x: np.ndarray, where: str) -> np.ndarray:
    """Check an array of images or rows: a shape pyrovae reads, uint8 or finite floats."""
    if x.dtype == object or x.ndim not in (2, 3, 4):
        raise ValueError(f"{where} has shape {x.shape} ({x.dtype}); save a regular array of shape {ARRAY_SHAPES}")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{where} holds {x.dtype}; save uint8 pixels (0 ... 255) or floats")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum())
        raise ValueError(f"{where} has NaN or infinite values in {bad} of {len(x)} examples; clean or drop them")
    return x


def _labels(y: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    if y is None:
        return np.zeros(len(x), dtype=np.int64)
    y = np.asarray(y)
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise ValueError(f"labels 'y' must be {len(x)} integers >= 0, one per image, got {y.dtype} of shape {y.shape}")
    return y.astype(np.int64)


def _check_same_kind(train: np.ndarray, test: np.ndarray, path: Path) -> None:
    if train.shape[1:] != test.shape[1:] or train.dtype != test.dtype:
        raise ValueError(f"{path}: x_train is {train.dtype} {train.shape[1:]} per image but x_test is {test.dtype} "
                         f"{test.shape[1:]}; save both splits alike")


def _hold_out(x: np.ndarray, y: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Train and test splits of a source without its own test split: a fixed random :data:`TEST_FRACTION`."""
    n_test = max(1, round(len(x) * TEST_FRACTION))
    if len(x) < 3:
        raise ValueError(f"{len(x)} examples are too few to hold out test and validation images; use at least 3")
    order = np.random.default_rng(HOLD_OUT_SEED).permutation(len(x))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def _source(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
            provenance: dict[str, Any]) -> Source:
    """The :class:`Source` of two splits, its provenance completed with shapes, dtype and content hash."""
    digest = hashlib.sha256()
    for array in (*train, *test):
        digest.update(np.ascontiguousarray(array).data)
    provenance |= {"shape": [len(train[0]) + len(test[0]), *train[0].shape[1:]], "dtype": str(train[0].dtype),
                   "sha256": digest.hexdigest()}
    return Source(train[0], train[1], test[0], test[1], provenance)
