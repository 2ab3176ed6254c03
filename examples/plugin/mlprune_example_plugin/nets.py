"""The example model: built as ``ExampleMLP(num_classes, (C, H, W))``."""

import torch
from torch import nn


class ExampleMLP(nn.Module):
    def __init__(self, num_classes: int, input_shape: tuple, hidden: int = 32):
        super().__init__()
        channels, height, width = input_shape
        self.fc1 = nn.Linear(channels * height * width, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))
