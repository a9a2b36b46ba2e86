"""Output heads for frame-level piano-roll models.

A head turns a context vector ``h_t`` (everything the model knows before frame ``t``) into a
distribution over the multi-hot frame ``x_t`` (tracks x pitches flattened to ``units``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrameHead(nn.Module):
    """Interface: ``nll(h, x) -> (B, T)`` nats summed over units; ``sample(h, temperature) -> (B, units)``."""

    def __init__(self, hidden_size: int, units: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.units = units

    def nll(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, h: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        raise NotImplementedError


class BernoulliHead(FrameHead):
    """Independent Bernoulli per pitch and track (as in the TCN paper's polyphonic experiments)."""

    def __init__(self, hidden_size: int, units: int) -> None:
        super().__init__(hidden_size, units)
        self.proj = nn.Linear(hidden_size, units)

    def nll(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits = self.proj(h)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)

    def sample(self, h: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        probs = torch.sigmoid(self.proj(h) / max(temperature, 1e-4))
        return torch.bernoulli(probs)


HEADS: dict[str, type[FrameHead]] = {"bernoulli": BernoulliHead}


def build_head(name: str, hidden_size: int, units: int, **kwargs) -> FrameHead:
    """Instantiate a head by name (``"bernoulli"``, ...)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {sorted(HEADS)}")
    return HEADS[name](hidden_size, units, **kwargs)
