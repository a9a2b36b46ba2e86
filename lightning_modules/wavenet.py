"""WaveNet over multi-track piano-rolls: causal dilated convolutions along time, a head per frame.

The piano-roll is a multichannel time series: each frame's tracks x pitches are the channels of a
1-D convolution over time. A stack of causal convolutions with dilations 1, 2, 4, ... (repeated
``n_stacks`` times) gives a receptive field that grows exponentially with depth, each block a gated
activation ``tanh(W_f * x) * sigmoid(W_g * x)`` with residual and skip connections (van den Oord
et al. 2016). The skips are summed into the context ``h_t``; a frame head (Bernoulli or NADE,
`lightning_modules.layers.heads`) turns ``h_t`` into a distribution over frame ``t``.

Training and scoring run the convolutions over whole sequences in parallel. Generation runs them
one step at a time with a queue of past inputs per layer (`layers.dilated_conv`), so 16 bars cost
256 cheap steps, not 256 passes over the receptive field.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from datamodules.representations import Representation
from lightning_modules.frame import PianoRollModule
from lightning_modules.layers.dilated_conv import DilatedConvStack
from lightning_modules.layers.heads import build_head

log = logging.getLogger(__name__)


class WaveNet(PianoRollModule):
    """Gated dilated causal convolutions over piano-roll frames, with a Bernoulli or NADE head.

    Args:
        representation: a piano-roll representation (tracks x pitches per step).
        residual_channels, gate_channels, skip_channels: widths of the residual stream, of the
            gated activation and of the skip outputs.
        kernel_size: of every dilated convolution.
        layers_per_stack, n_stacks: dilations ``1, 2, ..., 2**(layers_per_stack-1)``, ``n_stacks``
            times; the receptive field is ``1 + (kernel_size-1) * n_stacks * (2**layers_per_stack - 1)``
            frames.
        hidden_size: size of the context ``h_t`` the head reads.
        dropout: in the blocks and before the head.
        input_dropout: on the input frames (a cheap regulariser for small corpora).
        n_classes: global conditioning classes (0: none). A batch may carry ``"cond"`` (``(B,)``
            class ids; default 0); sampling takes the option ``cond`` (default 0).
        head, head_kwargs: output head (see `lightning_modules.layers.heads`).
    """

    def __init__(
        self,
        representation: Representation | dict[str, Any],
        residual_channels: int = 64,
        gate_channels: int = 64,
        skip_channels: int = 128,
        kernel_size: int = 2,
        layers_per_stack: int = 5,
        n_stacks: int = 2,
        hidden_size: int = 128,
        dropout: float = 0.2,
        input_dropout: float = 0.1,
        n_classes: int = 0,
        head: str = "bernoulli",
        head_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(representation, **kwargs)
        self.n_classes = n_classes
        self.input_dropout = nn.Dropout(input_dropout)
        self.stack = DilatedConvStack(
            self.units,
            residual_channels,
            gate_channels,
            skip_channels,
            kernel_size,
            layers_per_stack,
            n_stacks,
            dropout,
            n_classes,
        )
        self.post = nn.Sequential(
            nn.ReLU(), nn.Linear(skip_channels, hidden_size), nn.ReLU(), nn.Dropout(dropout)
        )
        self.head = build_head(head, hidden_size, self.units, **(head_kwargs or {}))
        # Not saved as a hyperparameter: checkpoints pass hparams back to __init__, which derives it.
        self.save_model_hyperparameters()

    @property
    def receptive_field(self) -> int:
        """Frames of the past that ``h_t`` sees (``x_in[t - rf + 1 .. t]``, i.e. frames ``t - rf .. t - 1``)."""
        return self.stack.receptive_field

    def on_fit_start(self) -> None:
        log.info("WaveNet receptive field: %d frames", self.receptive_field)
        for logger in self.loggers:
            logger.log_hyperparams({"model/receptive_field": self.receptive_field})

    def _cond(self, cond: torch.Tensor | int | None, n: int) -> torch.Tensor | None:
        """Class ids ``(n,)`` for the gates, or None without conditioning; missing means class 0."""
        if self.n_classes <= 0:
            return None
        if cond is None:
            cond = 0
        cond = torch.as_tensor(cond, dtype=torch.long, device=self.device)
        return cond.expand(n) if cond.dim() == 0 else cond.reshape(n)

    def context(self, x_in: torch.Tensor, cond: torch.Tensor | int | None = None) -> torch.Tensor:
        skips = self.stack(self.input_dropout(x_in).transpose(1, 2), self._cond(cond, len(x_in)))
        return self.post(skips.transpose(1, 2))

    def init_state(self, n: int, cond: torch.Tensor | int | None = None) -> dict[str, Any]:
        state = self.stack.init_state(n, self.device)
        state["cond"] = self._cond(cond, n)
        return state

    @torch.no_grad()
    def generate(
        self, n: int, length: int, temperature: float = 1.0, prompt: torch.Tensor | None = None, cond: int = 0
    ) -> torch.Tensor:
        """Frames as `PianoRollModule.generate`, conditioned on class ``cond`` when ``n_classes > 0``."""
        if self.n_classes and not 0 <= cond < self.n_classes:
            raise ValueError(f"cond must be a class id in 0..{self.n_classes - 1}, got {cond}")
        return self.generate_frames(n, length, temperature, prompt, self.init_state(n, cond))

    def step(self, frame: torch.Tensor, state: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        skips, state = self.stack.step(frame, state, state["cond"])
        return self.post(skips), state
