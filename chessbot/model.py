"""A small residual convolutional policy network with a fully convolutional move head:
64 output planes (to-square) over the 8x8 from-square grid give the 4096 move logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from chessbot.encoding import MOVES, PLANES


@dataclass
class ModelConfig:
    blocks: int = 6
    channels: int = 64

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class PolicyNet(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config.channels
        self.config = config
        self.stem = nn.Sequential(nn.Conv2d(PLANES, c, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.body = nn.Sequential(*(ResidualBlock(c) for _ in range(config.blocks)))
        self.head = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU(inplace=True), nn.Conv2d(c, 64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(self.stem(x)))  # [B, to, from_rank, from_file]
        return out.flatten(2).transpose(1, 2).reshape(x.shape[0], MOVES)  # from * 64 + to
