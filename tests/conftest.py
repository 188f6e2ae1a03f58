"""Shared fixtures: real data location, a tiny seeded classifier, devices."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from deid.models.classifier import ClassifierMeta, FaceClassifier
from deid.models.nets import ResNet

DATA = Path(
    os.environ.get("DEID_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
SCENES = DATA / "scenes"

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device", default=os.environ.get("DEID_TEST_DEVICE", "cpu"), help="cpu or cuda"
    )


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    return torch.device(name)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA} (set DEID_DATA_DIR)")
    return DATA


def synthetic_faces(n_per_class: int = 16, num_classes: int = 4, channels: int = 3, seed: int = 0):
    """Images of ``num_classes`` smooth random patterns plus noise: (N, C, 40, 36) in [0, 1]."""
    protos = torch.nn.functional.interpolate(
        torch.rand(num_classes, channels, 5, 5, generator=torch.Generator().manual_seed(0)),
        size=(40, 36),
        mode="bilinear",
        align_corners=False,
    )
    g = torch.Generator().manual_seed(seed)  # the noise differs per seed, the classes do not
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = protos[y] + 0.15 * torch.randn(len(y), channels, 40, 36, generator=g)
    return (x.clamp(0, 1) * 255).round() / 255, y


def tiny_classifier(num_classes: int = 4, channels: int = 3, seed: int = 0) -> FaceClassifier:
    """A 2-stage ResNet on 32x32 inputs, trained for a moment on :func:`synthetic_faces`."""
    torch.manual_seed(seed)
    meta = ClassifierMeta(
        arch="resnet",
        arch_params={"widths": [8, 16], "blocks": [1, 1], "dropout": 0.0, "stem_stride": 2},
        input_size=(32, 32),
        channels=channels,
        norm={"kind": "channel", "mean": [0.5] * channels, "std": [0.25] * channels},
        class_names=[f"id{i}" for i in range(num_classes)],
        template=[[0.35, 0.45], [0.65, 0.45], [0.5, 0.6], [0.38, 0.75], [0.62, 0.75]],
    )
    net = ResNet(channels, [8, 16], [1, 1], num_classes, 0.0)
    model = FaceClassifier(net, meta)
    x, y = synthetic_faces(num_classes=num_classes, channels=channels, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def _tiny_trained() -> FaceClassifier:
    return tiny_classifier()


@pytest.fixture
def tiny(_tiny_trained: FaceClassifier) -> FaceClassifier:
    import copy

    return copy.deepcopy(_tiny_trained)


@pytest.fixture
def faces() -> torch.Tensor:
    """8 held-out 8-bit synthetic 'faces' (N, 3, 40, 36) in [0, 1], two per class."""
    x, _ = synthetic_faces(n_per_class=2, seed=7)
    return x


def scene(name: str) -> np.ndarray:
    from deid.io import read_image

    path = SCENES / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return read_image(path)
