"""The identity networks themselves. They see normalised tensors of their fixed input size;
:class:`deid.models.classifier.FaceClassifier` wraps them so callers only ever see [0, 1] pixels."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected layers on the flattened crop (the seed's Yale B model).

    Args:
        in_features: C*H*W of the input.
        hidden: widths of the hidden layers.
        num_classes: identities.
        dropout: dropout before each hidden layer's output.
    """

    def __init__(
        self, in_features: int, hidden: list[int], num_classes: int, dropout: float = 0.2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [
                nn.Linear(width, h),
                nn.BatchNorm1d(h),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
            ]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def features(self, x: Tensor) -> Tensor:
        """(N, hidden[-1]) the last hidden layer: the embedding the classes are read from."""
        return self.net[:-1](x)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.short(x))


class ResNet(nn.Module):
    """A small ResNet for face identity: a strided stem, then stages of basic blocks.

    Args:
        in_channels: 1 or 3.
        widths: channels of each stage; every stage after the first halves the resolution.
        blocks: basic blocks per stage.
        num_classes: identities.
        dropout: before the final linear layer.
    """

    def __init__(
        self,
        in_channels: int,
        widths: list[int],
        blocks: list[int],
        num_classes: int,
        dropout: float = 0.2,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                stages.append(_Block(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))

    def features(self, x: Tensor) -> Tensor:
        """(N, widths[-1]) the pooled features: the embedding the classes are read from."""
        return self.head[:-1](self.stages(self.stem(x)))


def build_net(
    arch: str, params: dict, in_channels: int, input_hw: tuple[int, int], num_classes: int
) -> nn.Module:
    """Build a network from its metadata (the inverse of what training records)."""
    if arch == "mlp":
        return MLP(
            in_channels * input_hw[0] * input_hw[1],
            list(params["hidden"]),
            num_classes,
            float(params.get("dropout", 0.2)),
        )
    if arch == "resnet":
        return ResNet(
            in_channels,
            list(params["widths"]),
            list(params["blocks"]),
            num_classes,
            float(params.get("dropout", 0.2)),
            int(params.get("stem_stride", 2)),
        )
    raise ValueError(f"unknown architecture {arch!r}; available: ['mlp', 'resnet']")
