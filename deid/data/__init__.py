"""Face identity datasets: the shared npz files and the official layouts users own."""

from deid.data.datasets import (
    FaceDataset,
    data_dir,
    load_celeba,
    load_dataset,
    load_npz,
    load_yaleb,
)

__all__ = ["FaceDataset", "data_dir", "load_celeba", "load_dataset", "load_npz", "load_yaleb"]
