"""Loaders for the identity datasets in the npz format (see ``shared/data/README.md``).

Every npz holds ``images`` (uint8, (N,H,W) grayscale or (N,H,W,3) RGB), ``labels`` (int64,
0..K-1) and ``subject_ids`` (K,). Splits are deterministic per identity and described by a
small dict that goes into every checkpoint, so a split can be rebuilt exactly.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from deid.errors import DataError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

YALEB_FILES = {
    "48x42": "yaleb/yaleb_cropped_48x42.npz",
    "192x168": "yaleb/yaleb_cropped_192x168.npz",
}
CELEBA_FILE = "celeba/celeba_identities_aligned_64x64.npz"


def data_dir() -> Path:
    """The shared data folder: ``$DEID_DATA_DIR``, else ``../shared/data`` beside the repo root."""
    env = os.environ.get("DEID_DATA_DIR")
    return Path(env).expanduser() if env else (REPO_ROOT.parent / "shared" / "data")


def dataset_file(
    name: str, path: Path | str | None = None, resolution: Literal["48x42", "192x168"] = "48x42"
) -> Path:
    """The npz a loader reads: ``path`` when given, else the shared file of dataset ``name``
    (``yaleb`` at ``resolution``, or ``celeba``) under :func:`data_dir`."""
    if path:
        return Path(path)
    if name == "yaleb":
        return data_dir() / YALEB_FILES[resolution]
    if name == "celeba":
        return data_dir() / CELEBA_FILE
    raise DataError(f"unknown dataset {name!r}; available: ['celeba', 'yaleb']")


def default_dataset_files() -> list[Path]:
    """Every shared dataset file a command may read when it is given no ``--data``."""
    return [data_dir() / f for f in (*YALEB_FILES.values(), CELEBA_FILE)]


def cache_dir() -> Path:
    """Where decoded arrays are cached: ``$DEID_CACHE_DIR``, else ``~/.cache/deid``."""
    env = os.environ.get("DEID_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deid"


def load_npz(path: Path | str, cache: bool = True) -> dict[str, np.ndarray]:
    """Load every member of an npz file into memory.

    Compressed members (Yale B's 192x168 file is LZMA and takes seconds) are decoded once
    and cached uncompressed under :func:`cache_dir`, keyed by path, size and mtime.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file not found: {path} (set DEID_DATA_DIR or pass --data)")
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_dir() / f"{path.stem}-{key}.npz"
    if cache and cached.is_file():
        with np.load(cached, allow_pickle=False) as d:
            return {k: d[k] for k in d.files}
    try:
        with np.load(path, allow_pickle=False) as d:
            arrays = {k: d[k] for k in d.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable npz file ({e})") from e
    for k in ("images", "labels", "subject_ids"):
        if k not in arrays:
            raise DataError(
                f"{path}: missing key {k!r}; an identity npz needs images, labels, subject_ids"
            )
    if cache and path.stat().st_size > 20_000_000:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(cached)
        except OSError as e:  # a read-only home is not an error, only slower
            log.warning("could not cache %s: %s", cached, e)
    return arrays


@dataclass
class FaceDataset:
    """Images with identity labels and a fixed train/test split.

    Attributes:
        images: (N, H, W) or (N, H, W, 3) uint8.
        labels: (N,) int64 in 0..K-1.
        class_names: K names (the datasets' subject ids as strings).
        train: indices of the training images.
        test: indices of the held-out images.
        split: how the split was made (goes into checkpoints).
        extra: the file's other arrays (azimuth, filenames, ...).
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    train: np.ndarray
    test: np.ndarray
    split: dict[str, Any]
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def tensors(self, which: Literal["train", "test"]) -> tuple[Any, Any]:
        """(N, C, H, W) float32 in [0, 1] and (N,) int64 tensors of one split."""
        return self.tensors_at(self.train if which == "train" else self.test)

    def tensors_at(self, idx: np.ndarray) -> tuple[Any, Any]:
        """(N, C, H, W) float32 in [0, 1] and (N,) int64 tensors of the images at ``idx``."""
        import torch

        x = self.images[idx]
        x = x[:, None] if x.ndim == 3 else np.transpose(x, (0, 3, 1, 2))
        return (
            torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0),
            torch.from_numpy(self.labels[idx].astype(np.int64)),
        )


def per_identity_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``round(test_fraction * n_k)`` random images of every identity k (seeded)."""
    rng = np.random.default_rng(seed)
    test = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        n_test = max(1, round(test_fraction * len(idx)))
        test.append(np.sort(rng.permutation(idx)[:n_test]))
    test_idx = np.sort(np.concatenate(test))
    mask = np.zeros(len(labels), bool)
    mask[test_idx] = True
    return np.flatnonzero(~mask), test_idx


def make_split(
    arrays: dict[str, np.ndarray], spec: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Rebuild a split from its description (as stored in a checkpoint)."""
    kind = spec["kind"]
    labels = arrays["labels"]
    if kind == "random":
        return per_identity_split(labels, float(spec["test_fraction"]), int(spec["seed"]))
    if kind == "file":
        split = arrays["split"]
        return np.flatnonzero(split == 0), np.flatnonzero(split == 1)
    if kind == "azimuth":
        az = np.abs(arrays["azimuth"].astype(int))
        lim = int(spec["max_train_azimuth"])
        return np.flatnonzero(az <= lim), np.flatnonzero(az > lim)
    raise DataError(f"unknown split kind {kind!r}; expected one of ['azimuth', 'file', 'random']")


def _dataset(name: str, path: Path, split: dict[str, Any]) -> FaceDataset:
    arrays = load_npz(path)
    train, test = make_split(arrays, split)
    extra = {k: v for k, v in arrays.items() if k not in ("images", "labels", "subject_ids")}
    return FaceDataset(
        name=name,
        images=arrays["images"],
        labels=arrays["labels"].astype(np.int64),
        class_names=[str(s) for s in arrays["subject_ids"]],
        train=train,
        test=test,
        split={**split, "file": path.name},
        extra=extra,
    )


def load_yaleb(
    path: Path | str | None = None,
    resolution: Literal["48x42", "192x168"] = "48x42",
    split: Literal["random", "azimuth"] = "random",
    seed: int = 0,
    test_fraction: float = 0.2,
) -> FaceDataset:
    """Extended Yale B, cropped, grayscale.

    ``split="random"`` holds out ``test_fraction`` of every subject's images (seeded);
    ``split="azimuth"`` trains on light from |azimuth| <= 25 deg and tests on the harsher rest.
    """
    p = dataset_file("yaleb", path, resolution)
    if split == "random":
        spec: dict[str, Any] = {"kind": "random", "seed": seed, "test_fraction": test_fraction}
    else:
        spec = {"kind": "azimuth", "max_train_azimuth": 25}
    return _dataset("yaleb", p, spec)


def load_celeba(path: Path | str | None = None) -> FaceDataset:
    """The CelebA identity subset (RGB 64x64, aligned); uses the file's own ``split`` key."""
    p = dataset_file("celeba", path)
    arrays = load_npz(p)
    if "split" in arrays:
        spec: dict[str, Any] = {"kind": "file"}
    else:  # a file made by `deid data prepare` from a layout without a per-identity split
        spec = {"kind": "random", "seed": 0, "test_fraction": 0.2}
    return _dataset("celeba", p, spec)


def load_dataset(
    name: str, path: Path | str | None = None, split: dict[str, Any] | None = None
) -> FaceDataset:
    """Load a dataset by name (``yaleb`` or ``celeba``), optionally with a stored split spec."""
    if name == "yaleb":
        if split is None:
            return load_yaleb(path)
        p = dataset_file("yaleb", path)
        if "file" in split and path is None:
            p = data_dir() / "yaleb" / split["file"]
        return _dataset("yaleb", p, {k: v for k, v in split.items() if k != "file"})
    if name == "celeba":
        if split is None:
            return load_celeba(path)
        p = dataset_file("celeba", path)
        return _dataset("celeba", p, {k: v for k, v in split.items() if k != "file"})
    raise DataError(f"unknown dataset {name!r}; available: ['celeba', 'yaleb']")
