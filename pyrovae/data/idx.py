"""The IDX datasets, mnist and fashion-mnist: finding their four files (or downloading them) and reading them with
numpy, so that a missing, truncated or foreign file gets a one-line error naming the fix."""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import platformdirs

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}  # third byte: dtype
GZIP_MAGIC = b"\x1f\x8b"


class DataNotFoundError(FileNotFoundError):
    """The dataset's files are not on this machine and could not be downloaded."""


def data_root() -> Path:
    """Where pyrovae keeps the data it downloads: ``$PYROVAE_DATA``, else the user's cache folder."""
    return Path(os.environ.get("PYROVAE_DATA") or platformdirs.user_cache_dir("pyrovae", appauthor=False))


def read_idx(path: str | Path) -> np.ndarray:
    """The array an IDX file holds, gzipped or not (told by its first bytes, whatever its name)."""
    path = Path(path)
    try:
        content = path.read_bytes()
        if content.startswith(GZIP_MAGIC):
            content = gzip.decompress(content)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"cannot read IDX file {path}: {error}; download it again") from None
    return _parse_idx(content, path)


def _parse_idx(content: bytes, path: Path) -> np.ndarray:
    """Two zero bytes, a type code, the number of dimensions, each as a big-endian uint32, then the numbers."""
    truncated = ValueError(f"{path} is truncated or corrupt: its size does not match its header; download it again")
    if len(content) < 4:
        raise truncated
    if content[:2] != b"\0\0" or content[2] not in IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number); download it again")
    dtype, ndim = np.dtype(IDX_TYPES[content[2]]), content[3]
    header = 4 + 4 * ndim
    if len(content) < header:
        raise truncated
    shape = tuple(int(n) for n in np.frombuffer(content, ">u4", ndim, offset=4))
    if len(content) != header + math.prod(shape) * dtype.itemsize:
        raise truncated
    return np.frombuffer(content, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file_in(folder: Path, stem: str) -> Path | None:
    return next((folder / name for name in (stem, stem + ".gz") if (folder / name).is_file()), None)


def _complete_idx_set(folder: Path) -> dict[str, Path] | None:
    files = {key: _idx_file_in(folder, stem) for key, stem in IDX_FILES.items()}
    return files if all(files.values()) else None  # type: ignore[return-value]


def find_idx_files(dataset: str, data_dir: str | Path | None = None, download: bool = True) -> dict[str, Path]:
    """The four IDX files of ``dataset``: from ``data_dir``, a system folder, the data folder, or a download."""
    if data_dir is not None:
        files = _complete_idx_set(Path(data_dir))
        if files is None:
            raise DataNotFoundError(_missing_files_message(dataset, [Path(data_dir)]))
        return files
    downloaded = data_root() / TORCHVISION_CLASSES[dataset] / "raw"
    candidates = [d for d in (SYSTEM_DIRS.get(dataset), data_root() / dataset, downloaded) if d]
    for folder in candidates:
        files = _complete_idx_set(folder)
        if files is not None:
            return files
    failure = "downloads are switched off"
    if download:
        created = [d for d in (downloaded, downloaded.parent, data_root()) if not d.exists()]
        try:
            _download(dataset)
        except Exception as error:  # offline, proxy, disk: the user needs the same advice
            failure = f"the download failed ({(str(error).strip() or type(error).__name__).splitlines()[-1]})"
        files = _complete_idx_set(downloaded)
        if files is not None:
            return files
        for folder in created:  # deepest first: a failed download leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
    raise DataNotFoundError(_missing_files_message(dataset, candidates, failure))


def _download(dataset: str) -> None:
    """Fetch ``dataset`` with torchvision into the data folder (needs a network connection)."""
    import torchvision

    getattr(torchvision.datasets, TORCHVISION_CLASSES[dataset])(str(data_root()), download=True)


def _missing_files_message(dataset: str, searched: Sequence[Path], failure: str | None = None) -> str:
    names = ", ".join(IDX_FILES.values())
    where = ", ".join(str(d) for d in searched)
    failure = f", and {failure}" if failure else ""
    debian = (" On Debian or Ubuntu, `apt-get install dataset-fashion-mnist` puts them in "
              "/usr/share/datasets/fashion-mnist." if dataset == "fashion-mnist" else "")
    return (
        f"The {dataset} files were not found in {where}{failure}. Put the four IDX files "
        f"{names} (each gzipped as .gz or not) into one folder and pass it as data_dir=DIR.{debian}"
    )
