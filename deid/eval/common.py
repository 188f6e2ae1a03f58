"""What the eval reports share: the seeded held-out sample of a checkpoint's own split,
image-quality metrics (PSNR, SSIM), averages and CSV tables."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deid.data import FaceDataset, load_dataset
from deid.models import FaceClassifier


def dataset_of(model: FaceClassifier, data: Path | None = None) -> FaceDataset:
    """The dataset and split a checkpoint was trained on (rebuilt from its metadata)."""
    return load_dataset(model.meta.dataset, data, model.meta.split)


def sample_index(total: int, n: int, seed: int) -> np.ndarray:
    """Sorted positions of ``n`` of ``total`` held-out images, drawn at random (seeded)."""
    return np.sort(np.random.default_rng(seed).permutation(total)[: min(n, total)])


def sample_test(ds: FaceDataset, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` held-out faces drawn at random (seeded) from the test split."""
    x, y = ds.tensors("test")
    idx = sample_index(len(x), n, seed)
    return x[idx], y[idx]


def checkpoint_label(name: str | Path) -> str:
    """A short name for a checkpoint: a shipped name as is, a path by its file stem."""
    s = str(name)
    return Path(s).stem if s.endswith((".pt", ".pth")) else s


def psnr(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """(N,) PSNR in dB of [0, 1] images (inf where identical)."""
    mse = (x_adv - x).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def ssim(x: torch.Tensor, x_adv: torch.Tensor) -> np.ndarray:
    """(N,) structural similarity (scikit-image, Gaussian-free 7x7 windows) of [0, 1] crops."""
    from skimage.metrics import structural_similarity

    a = x.permute(0, 2, 3, 1).cpu().double().numpy()
    b = x_adv.permute(0, 2, 3, 1).cpu().double().numpy()
    return np.array(
        [
            structural_similarity(p[..., 0], q[..., 0], data_range=1.0)
            if p.shape[2] == 1
            else structural_similarity(p, q, data_range=1.0, channel_axis=2)
            for p, q in zip(a, b, strict=True)
        ]
    )


def finite_mean(v: torch.Tensor) -> float | None:
    """Mean of the finite values, to 2 decimals (None when there are none): the mean PSNR of
    a batch in which some images came out identical (inf dB)."""
    v = v[torch.isfinite(v)]
    return round(float(v.mean()), 2) if len(v) else None


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Rows (dicts with the same keys) as CSV; None as an empty cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
