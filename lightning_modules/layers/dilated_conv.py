"""Dilated causal convolutions with gated residual blocks, as in WaveNet (van den Oord et al. 2016).

Shapes follow ``nn.Conv1d``: ``(batch, channels, time)``. Everything here is causal: output ``t``
depends on inputs ``<= t`` only. Each module has two ways to run:

- ``forward`` over a whole sequence (training, scoring), with zero padding on the left;
- ``step`` one time step at a time for generation, with a queue per layer holding the few past
  inputs that layer's dilated kernel still needs ("fast WaveNet", Paine et al. 2016). A step costs
  O(layers), not O(receptive field), and gives exactly what ``forward`` gives, padding included.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def receptive_field(kernel_size: int, dilations: list[int]) -> int:
    """Inputs an output sees through a stack of dilated convolutions: ``1 + (k - 1) * sum(dilations)``."""
    return 1 + (kernel_size - 1) * sum(dilations)


class CausalConv1d(nn.Conv1d):
    """A ``Conv1d`` that only looks back: output ``t`` reads inputs ``t - (k-1)d, ..., t - d, t``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))

    def forward_taps(self, taps: torch.Tensor) -> torch.Tensor:
        """One output step from its ``kernel_size`` input taps ``(B, C_in, k)``, oldest first."""
        return F.linear(taps.flatten(1), self.weight.flatten(1), self.bias)


class GatedResidualBlock(nn.Module):
    """WaveNet block: ``z = tanh(W_f * x + V_f c) * sigmoid(W_g * x + V_g c)``; residual and skip outputs.

    Args:
        channels: residual channels (input and output).
        gate_channels: channels of ``z``.
        skip_channels: channels of the skip output.
        kernel_size, dilation: of the causal convolution.
        dropout: on ``z`` (training only).
        n_classes: global conditioning classes (0: none). A learned vector per class is added to
            the filter and gate pre-activations of this block.
    """

    def __init__(
        self,
        channels: int,
        gate_channels: int,
        skip_channels: int,
        kernel_size: int,
        dilation: int,
        dropout: float = 0.0,
        n_classes: int = 0,
    ) -> None:
        super().__init__()
        self.dilation = dilation
        self.kernel_size = kernel_size
        self.conv = CausalConv1d(channels, 2 * gate_channels, kernel_size, dilation)
        self.cond = nn.Embedding(n_classes, 2 * gate_channels) if n_classes > 0 else None
        self.res = nn.Conv1d(gate_channels, channels, 1)
        self.skip = nn.Conv1d(gate_channels, skip_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def _gate(self, pre: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if self.cond is not None and cond is not None:
            bias = self.cond(cond)  # (B, 2G)
            pre = pre + (bias.unsqueeze(-1) if pre.dim() == 3 else bias)
        filt, gate = pre.chunk(2, dim=1)
        return self.dropout(torch.tanh(filt) * torch.sigmoid(gate))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z = self._gate(self.conv(x), cond)
        # Scaling the residual sum by sqrt(1/2) keeps activations at the same size however deep.
        return (x + self.res(z)) * math.sqrt(0.5), self.skip(z)

    def init_queue(self, n: int, channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The ``(k - 1) * dilation`` past inputs this block reads, zero as the left padding is."""
        return torch.zeros(n, channels, self.conv.left_pad, device=device, dtype=dtype)

    def step(
        self, x: torch.Tensor, queue: torch.Tensor, t: int, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: ``x`` is this block's input at time ``t``, ``(B, C)``; ``queue`` is updated in place.

        ``queue`` is a ring buffer: the input of time ``s`` lives at ``s % len``. With ``len = (k-1)d``
        the oldest tap (``t - (k-1)d``) sits exactly where ``x`` goes, so it is read before the write.
        """
        size = queue.shape[-1]
        if size:
            index = [(t - m * self.dilation) % size for m in range(self.kernel_size - 1, 0, -1)]
            taps = torch.cat([queue[:, :, index], x.unsqueeze(-1)], dim=-1)
            queue[:, :, t % size] = x
        else:
            taps = x.unsqueeze(-1)
        z = self._gate(self.conv.forward_taps(taps), cond)
        res = F.linear(z, self.res.weight[..., 0], self.res.bias)
        skip = F.linear(z, self.skip.weight[..., 0], self.skip.bias)
        return (x + res) * math.sqrt(0.5), skip


class DilatedConvStack(nn.Module):
    """A 1x1 input projection, then ``n_stacks`` stacks of gated blocks with dilations 1, 2, 4, ...

    Returns the (scaled) sum of all blocks' skip outputs, ``(B, skip_channels, T)``.

    Args:
        in_channels: input channels (for piano-rolls: tracks x pitches).
        channels, gate_channels, skip_channels: see `GatedResidualBlock`.
        kernel_size: of every dilated convolution.
        layers_per_stack: blocks per stack; dilation doubles from 1 to ``2 ** (layers_per_stack - 1)``.
        n_stacks: how many times the dilation pattern repeats.
        dropout, n_classes: see `GatedResidualBlock`.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 64,
        gate_channels: int = 64,
        skip_channels: int = 128,
        kernel_size: int = 2,
        layers_per_stack: int = 5,
        n_stacks: int = 2,
        dropout: float = 0.0,
        n_classes: int = 0,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or layers_per_stack < 1 or n_stacks < 1:
            raise ValueError("kernel_size, layers_per_stack and n_stacks must all be >= 1")
        self.channels = channels
        self.kernel_size = kernel_size
        self.dilations = [2**i for _ in range(n_stacks) for i in range(layers_per_stack)]
        self.input = nn.Conv1d(in_channels, channels, 1)
        self.blocks = nn.ModuleList(
            GatedResidualBlock(channels, gate_channels, skip_channels, kernel_size, d, dropout, n_classes)
            for d in self.dilations
        )
        # Summing many skips grows their size with depth; 1/sqrt(n) keeps it steady at init.
        self.skip_scale = 1.0 / math.sqrt(len(self.blocks))

    @property
    def receptive_field(self) -> int:
        """Input steps each output sees (the 1x1 layers add none)."""
        return receptive_field(self.kernel_size, self.dilations)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.input(x)
        skips = 0
        for block in self.blocks:
            x, skip = block(x, cond)
            skips = skips + skip
        return skips * self.skip_scale

    def init_state(self, n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        """Generation state: the time step and one input queue per block."""
        return {"t": 0, "queues": [b.init_queue(n, self.channels, device, dtype) for b in self.blocks]}

    def step(
        self, x: torch.Tensor, state: dict[str, Any], cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """One step of ``forward``: ``x`` is ``(B, in_channels)``; returns ``(B, skip_channels)``."""
        h = F.linear(x, self.input.weight[..., 0], self.input.bias)
        skips = 0
        for block, queue in zip(self.blocks, state["queues"]):
            h, skip = block.step(h, queue, state["t"], cond)
            skips = skips + skip
        state["t"] += 1
        return skips * self.skip_scale, state
