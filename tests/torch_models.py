"""Small PyTorch models the push tests train on the digits data (imported by tests and entry points)."""

from __future__ import annotations

import numpy as np
import torch


class DigitsMLP(torch.nn.Module):
    """float32 [batch, 64] -> logits float32 [batch, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(64, 48)
        self.out = torch.nn.Linear(48, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(input)))


class DigitsCNN(torch.nn.Module):
    """float32 [batch, 64] (8x8 images, flattened) -> logits float32 [batch, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, kernel_size=3, padding=1)
        self.out = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        images = input.reshape(-1, 1, 8, 8)
        features = torch.nn.functional.max_pool2d(torch.relu(self.conv(images)), 2)
        return self.out(features.flatten(1))


class Standardize(torch.nn.Module):
    """A preprocessing model: float32 [batch, 64] -> (input - mean) / std, float32 [batch, 64]."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("std", torch.from_numpy(std.astype(np.float32)))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return (input - self.mean) / self.std


class TokenBag(torch.nn.Module):
    """Two int64 inputs [batch, sequence] (token ids, 0/1 mask) -> float32 [batch, 4]: a masked mean embedding."""

    def __init__(self, vocabulary: int = 100) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(vocabulary, 16)
        self.out = torch.nn.Linear(16, 4)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(torch.float32).unsqueeze(-1)
        pooled = (self.embedding(input_ids) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.out(pooled)


class ErfinvHead(torch.nn.Module):
    """float32 [batch, 64] -> float32 [batch, 10] through torch.erfinv, which torch.onnx cannot translate."""

    def __init__(self) -> None:
        super().__init__()
        self.out = torch.nn.Linear(64, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.erfinv(torch.tanh(self.out(input)) * 0.5)


class NoisyModel(torch.nn.Module):
    """Adds fresh random noise on every call: no conversion can match it, so parity must fail."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input + torch.rand_like(input)


def train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 150) -> torch.nn.Module:
    """Full-batch Adam on cross-entropy; returns the model in eval mode."""
    torch.manual_seed(0)
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(features), labels).backward()
        optimizer.step()
    return model.eval()


def predict(model: torch.nn.Module, *inputs: np.ndarray) -> np.ndarray:
    """The model's output for numpy inputs, as numpy."""
    with torch.inference_mode():
        return model(*(torch.from_numpy(value) for value in inputs)).numpy()


class OutlierMLP(torch.nn.Module):
    """A trained :class:`DigitsMLP` plus one hidden unit 10^4 times the pixel sum, which the output ignores.

    In fp32 its logits are the MLP's. In int8, the hidden activations share one scale, set by the
    outlier unit, so the units that matter all round to zero: accuracy falls to chance.
    """

    def __init__(self, mlp: DigitsMLP) -> None:
        super().__init__()
        self.hidden = mlp.hidden
        self.out = torch.nn.Linear(mlp.out.in_features + 1, mlp.out.out_features)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.weight[:, :-1] = mlp.out.weight
            self.out.bias.copy_(mlp.out.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        outlier = 1e4 * input.sum(dim=1, keepdim=True)
        return self.out(torch.cat([torch.relu(self.hidden(input)), outlier], dim=1))
