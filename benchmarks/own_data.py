"""Users' own images: loading a folder of PNGs, its memory, streaming against memory, and CIFAR-10 bits/dim.

Four figures, each side by side in one run:

- **loading**: ``load_dataset`` reads a folder of ``--images`` 32x32 colour PNGs in class
  subfolders into memory (the content hash and the checks included), against a plain
  ``torchvision.datasets.ImageFolder`` + ``DataLoader`` pass that decodes the same files into
  a list of batches (its default single process, and ``--workers`` processes). Each reading
  runs in a fresh process, the two taking turns for ``--rounds`` rounds; the figure is the best
  of each. Target: at most 60 s.
- **memory**: the peak resident memory of that loading process (``VmHWM``) above its resident
  memory before loading (the interpreter with torch and torchvision imported), against the
  images' uint8 size. Target: at most 2x.
- **streaming**: on a second folder of ``--stream-images`` PNGs, training examples per second
  over one epoch with the training images held in
  memory, and streamed because they exceed an in-memory limit set to a quarter of their size
  (``storage='auto'``, ``memory_limit``), the two taking turns; from the folder of PNGs (each
  batch decoded afresh) and from the same images in a uint8 ``.npy`` file (memory-mapped); the
  default MLP (400 hidden units, 50 latents, on 3 x 32 x 32 inputs) and ``--net conv``, the
  discretized logistic likelihood, batch 128. Target: streamed at least 0.7x in memory.
- **quality**: with ``--cifar DIR`` (CIFAR-10 in torchvision's layout), ``pyrovae train
  --dataset torchvision:CIFAR10 --net conv --likelihood discretized-logistic`` for
  ``--cifar-epochs`` epochs, then ``pyrovae evaluate``: the test bits per dimension (Kingma et
  al. 2016 report 3.11 for their IAF-VAE).

The folder is generated (``--folder``, default a temporary one) when it does not exist: each
class a fixed random colour pattern plus per-image noise, saved as PNG.

    python benchmarks/own_data.py [--images 50000] [--stream-images 10000] [--folder DIR] [--rounds 2]
                                  [--threads 2] [--cifar DIR]

Writes ``benchmarks/results/own-data-<machine>.{json,md}`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import machine_name  # noqa: E402

from pyrovae import ModelConfig, TrainConfig, build_vae, fit  # noqa: E402
from pyrovae.cli import main as pyrovae  # noqa: E402
from pyrovae.data.datasets import DataConfig, load_dataset  # noqa: E402
from pyrovae.data.streaming import StreamedSplit, default_workers, readers  # noqa: E402

SIDE = 32
CLASSES = 10


def make_folder(root: Path, images: int) -> None:
    """``images`` 32x32 RGB PNGs in ``CLASSES`` class subfolders: a fixed pattern per class plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, size=(CLASSES, SIDE, SIDE, 3))
    for label in range(CLASSES):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        label = i % CLASSES
        noisy = np.clip(patterns[label] + rng.integers(-40, 40, size=(SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / f"class{label}" / f"{i:06d}.png")


def peak_bytes() -> int:
    """This process's peak resident memory so far (``VmHWM``)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def child(kind: str, folder: str, workers: int) -> None:
    """One reading in this fresh process; prints seconds, peak bytes above the start, and images read."""
    import psutil
    import torchvision.datasets
    from torchvision.transforms import v2

    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    if kind == "pyrovae":
        data = load_dataset(DataConfig(dataset=folder, binarize="none", storage="memory"))
        count = len(data.train) + len(data.val) + len(data.test)
    else:
        images = torchvision.datasets.ImageFolder(folder, transform=v2.PILToTensor())
        loader = torch.utils.data.DataLoader(images, batch_size=256, num_workers=workers)
        batches = [x for x, _ in loader]
        count = sum(map(len, batches))
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_above_start": peak_bytes() - before, "images": count}))


def reading(kind: str, folder: Path, workers: int = 0) -> dict[str, float]:
    output = subprocess.run([sys.executable, __file__, "--child", kind, "--folder", str(folder),
                             "--workers", str(workers)], check=True, capture_output=True, text=True).stdout
    return json.loads(output.splitlines()[-1])


def loading(folder: Path, rounds: int, workers: int) -> dict[str, dict[str, float]]:
    """The best of ``rounds`` readings of each kind, taking turns."""
    kinds = {"pyrovae": 0, "ImageFolder + DataLoader": 0, f"ImageFolder + DataLoader, {readers(workers)}": workers}
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind, kind_workers in kinds.items():
            runs[kind].append(reading("pyrovae" if kind == "pyrovae" else "plain", folder, kind_workers))
    return {kind: min(rows, key=lambda row: row["seconds"]) for kind, rows in runs.items()}


def examples_per_second(data, net: str) -> float:
    """Training examples per second over one epoch of a fresh model (training steps only)."""
    vae = build_vae(ModelConfig(image_shape=data.image_shape, net=net, likelihood="discretized-logistic"))
    row = fit(vae, data, TrainConfig(epochs=1, batch_size=128, device="cpu"), progress=False, verbose=False)[-1]
    return len(data.train) / row["epoch_seconds"]


def streaming(source: Path, rounds: int, net: str) -> dict[str, float]:
    """Examples/s of one epoch in memory and streamed (the median over ``rounds``, taking turns)."""
    in_memory = load_dataset(DataConfig(dataset=str(source), binarize="none", storage="memory"))
    quarter = in_memory.train.x.nbytes / 4 / 2**30
    streamed = load_dataset(DataConfig(dataset=str(source), binarize="none", memory_limit=quarter))
    assert isinstance(streamed.train, StreamedSplit), "auto should stream a dataset 4x the in-memory limit"
    speeds: dict[str, list[float]] = {"memory": [], "streamed": []}
    for _ in range(rounds):
        speeds["memory"].append(examples_per_second(in_memory, net))
        speeds["streamed"].append(examples_per_second(streamed, net))
    memory, stream = (float(np.median(speeds[kind])) for kind in ("memory", "streamed"))
    return {"source": "PNG folder" if source.is_dir() else ".npy file", "net": net, "memory_examples_per_s": memory,
            "streamed_examples_per_s": stream, "ratio": stream / memory, "limit_bytes": quarter * 2**30,
            "workers": streamed.train.workers}


def as_npy(folder: Path, path: Path) -> Path:
    """The folder's images as one uint8 ``.npy`` array ``(N, 3, 32, 32)``, to stream from a memory-mapped file."""
    data = load_dataset(DataConfig(dataset=str(folder), binarize="none", storage="memory"))
    np.save(path, torch.cat([data.train.x, data.val.x, data.test.x]).reshape(-1, 3, SIDE, SIDE).numpy())
    return path


def cifar_bits_per_dim(root: str, epochs: int, out: Path) -> dict[str, float]:
    run = out / "cifar10"
    started = time.perf_counter()
    assert pyrovae(["train", "--dataset", "torchvision:CIFAR10", "--data-dir", root, "--net", "conv",
                    "--likelihood", "discretized-logistic", "--epochs", str(epochs), "--out", str(run),
                    "--no-progress", "--overwrite"]) == 0
    seconds = time.perf_counter() - started
    assert pyrovae(["evaluate", str(run), "--num-samples", "100", "--no-progress"]) == 0
    report = json.loads((run / "eval.json").read_text())
    return {"epochs": epochs, "bits_per_dim": report["bits_per_dim"], "train_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000, help="PNGs to read into memory")
    parser.add_argument("--stream-images", type=int, default=10_000, help="PNGs to train an epoch on")
    parser.add_argument("--folder", type=Path, help="the folder of PNGs (generated if missing)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=default_workers(), help="the plain DataLoader's workers")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--nets", nargs="+", default=["mlp", "conv"])
    parser.add_argument("--cifar", metavar="DIR", help="CIFAR-10 in torchvision's layout under DIR")
    parser.add_argument("--cifar-epochs", type=int, default=10)
    parser.add_argument("--child", choices=("pyrovae", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, str(args.folder), args.workers)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or Path(scratch) / "pngs"
        if not folder.exists():
            make_folder(folder, args.images)
        uint8_bytes = args.images * 3 * SIDE * SIDE
        read = loading(folder, args.rounds, args.workers)
        small = Path(scratch) / "stream"
        make_folder(small, args.stream_images)
        npy = as_npy(small, Path(scratch) / "images.npy")
        streams = [streaming(source, args.rounds, net) for source in (small, npy) for net in args.nets]
        quality = cifar_bits_per_dim(args.cifar, args.cifar_epochs, Path(scratch)) if args.cifar else None
    ours = read["pyrovae"]
    rows = ["| figure | pyrovae | reference | ratio | target | met |", "|---|---|---|---|---|---|"]
    for kind, plain in read.items():
        if kind != "pyrovae":
            rows.append(f"| read {args.images:,} PNGs into memory (s) | {ours['seconds']:.1f} | {plain['seconds']:.1f} "
                        f"{kind} | {ours['seconds'] / plain['seconds']:.2f} | <= 60 s | "
                        f"{'yes' if ours['seconds'] <= 60 else 'no'} |")
    ratio = ours["peak_above_start"] / uint8_bytes
    rows.append(f"| peak memory of that reading, above the interpreter's (MB) | {ours['peak_above_start'] / 1e6:.0f} | "
                f"{uint8_bytes / 1e6:.0f} uint8 pixels | {ratio:.2f} | <= 2 | {'yes' if ratio <= 2 else 'no'} |")
    for row in streams:
        rows.append(f"| training examples/s, {row['net']}, streamed from a {row['source']} ({readers(row['workers'])}) "
                    f"vs in memory | "
                    f"{row['streamed_examples_per_s']:,.0f} | {row['memory_examples_per_s']:,.0f} | "
                    f"{row['ratio']:.2f} | >= 0.7 | {'yes' if row['ratio'] >= 0.7 else 'no'} |")
    if quality:
        rows.append(f"| CIFAR-10 test bits/dim, conv VAE, {quality['epochs']} epochs | {quality['bits_per_dim']:.2f} | "
                    f"3.11 IAF-VAE (Kingma et al. 2016) | - | - | - |")
    results = Path(__file__).parent / "results" / f"own-data-{machine_name('cpu')}"
    results.with_suffix(".json").write_text(json.dumps({"images": args.images, "uint8_bytes": uint8_bytes,
                                                        "loading": read, "streaming": streams, "cifar10": quality},
                                                       indent=2))
    results.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
