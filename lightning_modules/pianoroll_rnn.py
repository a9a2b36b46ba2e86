"""Multi-track piano-roll RNN (the seed's "modified RNN"): LSTM or GRU over frames, a head per frame.

Each time step sees the whole previous frame (all tracks x pitches), so chords of any shape and any
number of voices are modelled: there is no chord vocabulary to restrict them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from datamodules.representations import Representation
from lightning_modules.frame import PianoRollModule
from lightning_modules.layers.heads import build_head


class PianoRollRNN(PianoRollModule):
    """LSTM/GRU over multi-hot frames with a Bernoulli (or other) frame head.

    Args:
        representation: a piano-roll representation (tracks x pitches per step).
        cell: ``"lstm"`` or ``"gru"``.
        hidden_size, num_layers, dropout: recurrent stack size.
        head: output head name (see `lightning_modules.layers.heads`).
        input_dropout: dropout on the input frames (a cheap regulariser for small corpora).
    """

    def __init__(
        self,
        representation: Representation | dict[str, Any],
        cell: str = "lstm",
        hidden_size: int = 256,
        num_layers: int = 2,
        dropout: float = 0.2,
        input_dropout: float = 0.0,
        head: str = "bernoulli",
        head_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(representation, **kwargs)
        self.save_model_hyperparameters()
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU}.get(cell.lower())
        if rnn_cls is None:
            raise ValueError(f"cell must be 'lstm' or 'gru', not {cell!r}")
        self.input = nn.Sequential(nn.Dropout(input_dropout), nn.Linear(self.units, hidden_size))
        self.rnn = rnn_cls(
            hidden_size, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0
        )
        self.out_dropout = nn.Dropout(dropout)
        self.head = build_head(head, hidden_size, self.units, **(head_kwargs or {}))

    def context(self, x_in: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h, _ = self.rnn(self.input(x_in))
        return self.out_dropout(h)

    def init_state(self, n: int, cond: torch.Tensor | int | None = None) -> Any:
        return None

    def step(self, frame: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        h, state = self.rnn(self.input(frame[:, None]), state)
        return h[:, 0], state
