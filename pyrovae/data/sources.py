"""Users' own data (``.npy``/``.npz`` arrays, folders of images, torchvision's classes) as a :class:`Source` of
train and test splits; a folder and a ``.npy`` file are opened lazily, so that training can stream them. Every source
records what was read, with a SHA-256 (:attr:`Source.provenance`): resuming or evaluating refuses data that changed
since (:func:`check_unchanged`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import inspect
import io
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from pyrovae.data.idx import data_root
from pyrovae.data.splits import TEST_FRACTION as TEST_FRACTION  # pyrovae.data.sources.TEST_FRACTION, as before
from pyrovae.data.splits import held_out_test
from pyrovae.memory import TooBig, free_bytes, in_bytes, where
from pyrovae.settings import SettingError

TORCHVISION_PREFIX = "torchvision:"
ARRAY_SHAPES = "(N, D), (N, H, W) or (N, C, H, W)"
CHECK_ROWS = 4096
"""Rows checked at a time for NaN in a float array, so that a memory-mapped file is never read whole."""


class SourceChanged(ValueError):
    """The data a run was trained on are not the data read now."""


class ArrayExamples(Dataset):
    """The rows of an array (perhaps memory-mapped) as ``(example, label)`` pairs, each through ``transform``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        example = torch.from_numpy(np.array(self.x[index]))  # a copy: a memory-mapped row is read-only
        if self.x.ndim == 3:  # (H, W): one channel
            example = example[None]
        if self.transform is not None:
            example = self.transform(example)
        return example, int(self.y[index])


@dataclasses.dataclass
class Source:
    """A dataset's train and test splits as torch datasets of ``(example, label)`` pairs; ``streamable``: the
    training split may be read batch by batch from its files."""

    train: Dataset
    test: Dataset
    example_shape: tuple[int, ...]
    dtype: np.dtype
    provenance: dict[str, Any]
    streamable: bool = False

    def bytes_per_example(self) -> int:
        return int(np.prod(self.example_shape)) * self.dtype.itemsize


def read_source(dataset: str, data_dir: str | None = None, image_size: int | None = None,
                download: bool = True) -> Source:
    """Open the source ``dataset`` names: ``torchvision:NAME``, a ``.npy``/``.npz`` file, or a folder of images."""
    if dataset.startswith(TORCHVISION_PREFIX):
        return read_torchvision(dataset.removeprefix(TORCHVISION_PREFIX), data_dir, image_size, download)
    path = Path(dataset).expanduser()
    if path.suffix in (".npy", ".npz"):
        return read_arrays(path, image_size)
    if path.is_dir():
        return read_image_folder(path, image_size)
    raise FileNotFoundError(f"dataset={dataset!r} is neither a bundled dataset (digits, mnist, fashion-mnist), "
                            f"nor a .npy/.npz or .csv/.parquet file, nor an existing folder of images, nor "
                            f"torchvision:NAME")


def read_arrays(path: Path, image_size: int | None = None) -> Source:
    """Images or a table: ``x`` of a ``.npy`` file (memory-mapped), or ``x`` and ``y`` or both splits' of a ``.npz``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the path of a .npy or .npz file")
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")  # a .npy file stays on disk until read
        if isinstance(loaded, np.ndarray):
            arrays = {"x": loaded}
        else:
            with loaded:
                arrays = {key: loaded[key] for key in loaded.files}
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as error:
        if "Object arrays" in str(error) or "Python objects" in str(error):  # numpy's words advise allow_pickle
            raise ValueError(f"cannot read {path}: it holds Python objects. A ragged array (rows of different "
                             f"lengths) is saved as objects; save one regular array of shape {ARRAY_SHAPES}") from None
        raise _unreadable(path) from None
    if not all(isinstance(array, np.ndarray) for array in arrays.values()):  # numpy hands back a garbled member's bytes
        raise _unreadable(path)
    if "x_train" in arrays:
        if "x_test" not in arrays:
            raise ValueError(f"{path} has x_train but no x_test; save both splits, or one array under 'x'")
        x, test_x = _images(arrays["x_train"], f"{path}['x_train']"), _images(arrays["x_test"], f"{path}['x_test']")
        _check_same_kind(x, test_x, path)
        examples = len(x) + len(test_x)
        y = checked_labels(arrays.get("y_train"), len(x), f"{path}['y_train']", examples)
        test_y = checked_labels(arrays.get("y_test"), len(test_x), f"{path}['y_test']", examples)
        content = (x, y, test_x, test_y)
    elif "x" in arrays:
        x = _images(arrays["x"], f"{path}['x']" if path.suffix == ".npz" else str(path))
        y, test_x, test_y = checked_labels(arrays.get("y"), len(x), f"{path}['y']", len(x)), None, None
        content = (x, y)
    else:
        raise ValueError(f"{path} holds {', '.join(sorted(arrays)) or 'no arrays'}; name the images 'x' (and the "
                         f"labels 'y'), or save 'x_train', 'y_train', 'x_test' and 'y_test'")
    if image_size is not None and x.ndim == 2:
        raise SettingError("image_size", f"image_size={image_size} resizes images, and these data are a table of "
                                         f"shape {x.shape}; drop image_size")
    transform = None if image_size is None else _resize_and_crop(image_size)
    train = ArrayExamples(x, y, transform)
    splits = _hold_out(train) if test_x is None else (train, ArrayExamples(test_x, test_y, transform))
    example = x.shape[1:] if x.ndim != 3 else (1, *x.shape[1:])
    if image_size is not None:
        example = (example[0], image_size, image_size)
    size = len(x) + (0 if test_x is None else len(test_x))
    provenance = {"kind": "arrays", "path": str(path.resolve()), "shape": [size, *x.shape[1:]],
                  "dtype": str(x.dtype), "sha256": _sha256(np.ascontiguousarray(a).data for a in content)}
    return Source(*splits, tuple(example), x.dtype, provenance, streamable=isinstance(x, np.memmap))


def _unreadable(path: Path) -> ValueError:
    """The error for a file numpy cannot read: empty, damaged, or not a numpy file at all, by its first bytes."""
    with path.open("rb") as file:
        head = file.read(len(np.lib.format.MAGIC_PREFIX))
    damage = ("empty (0 bytes)" if not head else "truncated or corrupt: numpy cannot read it"
              if head.startswith((np.lib.format.MAGIC_PREFIX, b"PK")) else "not a numpy file")
    return ValueError(f"{path} is {damage}; write it again (numpy.save, numpy.savez)")


def read_image_folder(path: Path, image_size: int | None) -> Source:
    """Images in class subfolders (``path/CLASS/IMAGE``), regular files only; only their headers are decoded here
    (and a PNG's checksums checked), to check sizes."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(path), transform=_image_transform(image_size))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path} holds no images in class subfolders ({error}); put each class's images "
                                f"into a subfolder: {path}/CLASS/IMAGE.png") from None
    sizes: set[tuple[int, int]] = set()
    modes: set[str] = set()

    def files() -> Iterable[bytes]:
        for file, label in folder.samples:
            if not Path(file).is_file():  # reading a pipe would block, a device (/dev/zero) never end
                raise ValueError(f"{file} is not a regular file (a pipe, device or broken link); move it out of "
                                 f"{path}")
            content = Path(file).read_bytes()
            with _readable_image(file), Image.open(io.BytesIO(content)) as image:  # the header only
                sizes.add((image.height, image.width))
                modes.add(Image.getmodebase(image.mode))
                image.verify()  # a PNG's checksums, without decoding its pixels: a truncated file fails here
            yield f"{Path(file).relative_to(path)}\0{label}\0{len(content)}\0".encode() + content

    digest = _sha256(files())
    channels = 1 if modes == {"L"} else 3  # grayscale images stay one channel; any colour makes them all RGB
    folder.loader = functools.partial(_open_image, mode="L" if channels == 1 else "RGB")
    if len(sizes) > 1 and image_size is None:
        _mixed_sizes(sorted((channels, *size) for size in sizes), str(path))
    height, width = (image_size, image_size) if image_size is not None else sizes.pop()
    provenance = {"kind": "image-folder", "path": str(path.resolve()), "classes": folder.classes,
                  "shape": [len(folder), channels, height, width], "dtype": "uint8", "sha256": digest}
    return Source(*_hold_out(folder), (channels, height, width), np.dtype(np.uint8), provenance, streamable=True)


def _open_image(file: str, mode: str) -> Any:
    """A PIL image read and converted to ``mode`` (a function, so that DataLoader workers can pickle it)."""
    from PIL import Image

    with _readable_image(file):
        return Image.open(file).convert(mode)


@contextlib.contextmanager
def _readable_image(file: str) -> Iterator[None]:
    """PIL's failures to read ``file`` (not an image, damaged, more pixels than its decompression-bomb limit) as
    one-line ValueErrors naming it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"{file} has more pixels than PIL's limit of {Image.MAX_IMAGE_PIXELS} for one image (a "
                         f"guard against decompression bombs); shrink it, or move it out of the folder") from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"{file} is not an image file PIL can read (empty, or another kind of file); replace it "
                         f"with an image, or move it out of the folder") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ValueError(f"cannot read the image {file} ({error}); replace it, or move it out of the "
                         f"folder") from None


def read_torchvision(name: str, data_dir: str | None, image_size: int | None, download: bool) -> Source:
    """A torchvision dataset class by name, read whole; ``root``, ``train``/``split``, ``download`` if it takes them."""
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
    root = Path(data_dir).expanduser() if data_dir else data_root() / "torchvision"

    def split(train: bool) -> Any:
        offered = {"root": str(root), "download": download, "train": train}
        options: dict[str, Any] = {key: value for key, value in offered.items() if key in parameters}
        if "split" in parameters and "train" not in parameters:
            options["split"] = "train" if train else "test"
        options["transform"] = _image_transform(image_size)
        try:
            return cls(**options)
        except (RuntimeError, OSError) as error:
            expected = _expected_files(cls, root)
            where = f"; it looks for {expected}" if expected else ""
            raise FileNotFoundError(f"torchvision's {name} could not read its files from {root} ({error}){where}; "
                                    f"run once where the network is reachable to download them, or put those "
                                    f"files there (data_dir=DIR)") from None

    def arrays(dataset: Any) -> ArrayExamples:
        return ArrayExamples(materialize(dataset, f"{TORCHVISION_PREFIX}{name}"), labels_of(dataset))

    train_set = split(True)
    if image_size is not None:
        check_fits(len(train_set), 3, image_size, 1)
    train = arrays(train_set)
    if "train" in parameters or "split" in parameters:
        test = arrays(split(False))
        splits, content = (train, test), (train.x, train.y, test.x, test.y)
    else:
        splits, content = _hold_out(train), (train.x, train.y)
    provenance = {"kind": "torchvision", "class": name, "shape": [sum(map(len, splits)), *train.x.shape[1:]],
                  "dtype": str(train.x.dtype), "sha256": _sha256(np.ascontiguousarray(a).data for a in content)}
    if "root" in parameters:
        provenance["path"] = str(root.resolve())
    return Source(*splits, tuple(train.x.shape[1:]), train.x.dtype, provenance)


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


def materialize(examples: Dataset, where: str) -> np.ndarray:
    """A split read into one array ``(N, *example_shape)``, allocated once: never a second copy of the pixels."""
    base, index = examples, np.arange(len(examples))
    while isinstance(base, Subset):  # a hold-out of a hold-out: compose the indices
        base, index = base.dataset, np.asarray(base.indices)[index]
    if isinstance(base, ArrayExamples) and base.transform is None:
        x = base.x[index]  # a gather: a memory-mapped file is read into memory
        return x[:, None] if x.ndim == 3 else x
    return _stack((example for example, _ in examples), len(examples), where)


def arrays_of(dataset: Dataset, image_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, C, H, W)`` and integer labels from a torch ``Dataset`` of ``(image, label)`` pairs (PIL
    images, tensors or arrays)."""
    from PIL.Image import Image

    transform, labels = _image_transform(image_size), []

    def images() -> Iterable[Any]:
        for image, label in dataset:
            labels.append(int(label))
            yield transform(image) if isinstance(image, Image) else image

    x = _stack(images(), len(dataset), type(dataset).__name__)
    return x, np.asarray(labels, dtype=np.int64)


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
    needed, free = count * channels * image_size ** 2 * (bytes_per_value + 4), free_bytes(torch.device("cpu"))
    if needed > free:  # the resized pixels, and their float copy for training
        raise TooBig("image_size", f"image_size={image_size} makes {count} images of {in_bytes(needed / count)} "
                                   f"each, about {in_bytes(needed)} in all; {where(torch.device('cpu'))} has "
                                   f"{in_bytes(free)} free; lower image_size")


def labels_of(examples: Dataset) -> np.ndarray:
    """The integer labels of a split, read without its examples where the source keeps them apart."""
    if isinstance(examples, Subset):
        return labels_of(examples.dataset)[np.asarray(examples.indices)]
    targets = examples.y if isinstance(examples, ArrayExamples) else getattr(examples, "targets", None)
    if targets is None:
        targets = [label for _, label in examples]
    return np.asarray(targets, dtype=np.int64).reshape(-1)


def _image_transform(image_size: int | None) -> Any:
    """PIL image to a uint8 tensor (C, H, W), resized (shorter side) and centre-cropped to ``image_size``."""
    from torchvision.transforms import v2

    steps = [v2.PILToTensor()]
    if image_size is not None:
        steps.append(_resize_and_crop(image_size))
    return v2.Compose(steps)


def _resize_and_crop(image_size: int) -> Any:
    """An image tensor (C, H, W) resized (shorter side) and centre-cropped to ``image_size``."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])


def _stack(examples: Iterable[Any], count: int, where: str) -> np.ndarray:
    """One array of ``count`` examples of one shape, allocated once and filled in place."""
    stacked, sizes = None, set()
    for i, example in enumerate(examples):
        example = np.asarray(example)
        if stacked is None:
            stacked = np.empty((count, *example.shape), example.dtype)
        sizes.add(example.shape)
        if example.shape == stacked.shape[1:]:
            stacked[i] = example
    if stacked is None:
        raise ValueError(f"{where} holds no images; add images, or point dataset= at another source")
    if len(sizes) > 1:
        _mixed_sizes(sorted(sizes), where)
    return stacked[:, None] if stacked.ndim == 3 else stacked


def _mixed_sizes(sizes: list[tuple[int, ...]], where: str) -> NoReturn:
    shown = ", ".join("x".join(map(str, s)) for s in sizes[:4]) + (" ..." if len(sizes) > 4 else "")
    raise ValueError(f"{where} has images of {len(sizes)} sizes ({shown}, as channels x height x width); "
                     f"pass image_size=S to resize and crop them all to S x S")


def _images(x: np.ndarray, where: str) -> np.ndarray:
    """Check an array of images or rows: a shape pyrovae reads, uint8 or finite floats (read in chunks)."""
    if x.dtype == object or x.ndim not in (2, 3, 4) or x.size == 0:
        raise ValueError(f"{where} has shape {x.shape} ({x.dtype}); save a regular, non-empty array of shape "
                         f"{ARRAY_SHAPES}")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{where} holds {x.dtype}; save uint8 pixels (0 ... 255) or floats")
    if np.issubdtype(x.dtype, np.floating):
        bad = sum(int((~np.isfinite(x[i:i + CHECK_ROWS].reshape(-1, int(np.prod(x.shape[1:]))))).any(axis=1).sum())
                  for i in range(0, len(x), CHECK_ROWS))
        if bad:
            raise ValueError(f"{where} has NaN or infinite values in {bad} of {len(x)} examples; clean or drop them")
    return x


def checked_labels(y: Any, count: int, where: str, examples: int) -> np.ndarray:
    """The class labels of ``count`` images as int64 (0 if missing): integers 0, 1, ..., fewer classes than the
    ``examples`` of all splits (a larger label is a mistake that would make a model of that many classes)."""
    if y is None:
        return np.zeros(count, dtype=np.int64)
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y)
    if y.shape != (count,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: {count} images need {count} labels, integers >= 0, one per image; got {y.dtype} "
                         f"of shape {y.shape}")
    if count and y.min() < 0:
        raise ValueError(f"{where}: labels must be classes 0, 1, ..., and {int((y < 0).sum())} of {len(y)} are "
                         f"negative (the smallest {y.min()}); number the classes from 0")
    if count and y.max() >= examples:
        raise ValueError(f"{where} holds the label {y.max()}, more classes than the {examples} examples; number the "
                         f"classes 0, 1, ... without gaps")
    return y.astype(np.int64)


def _check_same_kind(train: np.ndarray, test: np.ndarray, path: Path) -> None:
    if train.shape[1:] != test.shape[1:] or train.dtype != test.dtype:
        raise ValueError(f"{path}: x_train is {train.dtype} {train.shape[1:]} per image but x_test is {test.dtype} "
                         f"{test.shape[1:]}; save both splits alike")


def _hold_out(examples: Dataset) -> tuple[Subset, Subset]:
    """Train and test splits of a source without its own test split: a fixed random :data:`TEST_FRACTION`."""
    test, train = held_out_test(len(examples))
    return Subset(examples, train), Subset(examples, test)


def _sha256(chunks: Iterable[Any]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()
