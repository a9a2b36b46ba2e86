"""`TokenModule`: the base of autoregressive models over one token sequence (the token counterpart
of `PianoRollModule`).

The model reads ``[BOS, x_0, ..., x_{T-2}]`` and predicts ``x_0 .. x_{T-1}``: a begin-of-sequence
token that no representation emits (id ``vocab_size``) starts every sequence, so the first real
token is predicted too. Padding is masked out of the loss, which is the cross-entropy in nats per
token. Generation runs the whole batch at once, with temperature, top-k and top-p, from a primer
if one is given, and through a cache when the model keeps one.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from datamodules.representations import Representation
from lightning_modules.base import GenerativeModule, IncompatibleRepresentation
from lightning_modules.layers.sampling import sample_logits


class TokenModule(GenerativeModule):
    """Base of token models. A subclass implements ``forward(tokens, cache=None) -> (logits, cache)``.

    ``tokens`` is ``(B, T)`` input ids (`input_vocab_size` values: the representation's tokens and
    `bos_id`); ``logits`` is ``(B, T, n_classes)``: at each position, the scores of the class that
    comes next. With ``supports_cache = True``, ``forward`` given the cache of a prefix and only the
    tokens that follow it returns the same logits for those tokens as running the whole sequence
    (a key/value cache, or an RNN state); generation then costs one step per token.

    Two hooks let a model predict something other than the raw next token (Melody RNN's lookback
    predicts "repeat the event of a bar ago"): ``targets(x)`` gives the class of each step (default:
    the token) and ``classes_to_tokens(classes, history)`` turns sampled classes back into tokens.
    """

    accepts_prompt: ClassVar[bool] = True
    supports_cache: ClassVar[bool] = False

    def __init__(self, representation: Representation | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(representation, **kwargs)
        info = self.representation.describe()
        if info.kind != "tokens" or info.vocab_size is None:
            raise IncompatibleRepresentation(
                f"{type(self).__name__} needs a token representation with a vocabulary, got a "
                f"{info.kind!r} one"
            )
        self.vocab_size = int(info.vocab_size)
        self.bos_id = self.vocab_size
        self.input_vocab_size = self.vocab_size + 1
        self.n_classes = self.vocab_size

    # ----------------------------------------------------------------------------- to implement
    def forward(self, tokens: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """The class to predict at each step of ``x`` ``(B, T)``: the token itself by default."""
        return x

    def classes_to_tokens(self, classes: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Tokens for sampled ``classes`` ``(B,)`` after the tokens ``history`` ``(B, t)``."""
        return classes

    # ----------------------------------------------------------------------------- training
    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``[BOS, x_0, ..., x_{T-2}]``: what the model reads to predict ``x``."""
        return torch.cat([torch.full_like(x[:, :1], self.bos_id), x[:, :-1]], dim=1)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, mask = batch["x"].long(), batch["mask"]
        logits, _ = self(self.inputs(x))
        targets = self.targets(x)
        nll = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")
        weight = mask.to(nll.dtype)
        count = weight.sum().clamp_min(1.0)
        accuracy = ((logits.argmax(-1) == targets) & mask).sum() / count
        return {"loss": (nll * weight).sum() / count, "accuracy": accuracy}

    # ----------------------------------------------------------------------------- generation
    def next_logits(
        self, history: torch.Tensor, cache: Any, new: int, use_cache: bool
    ) -> tuple[torch.Tensor, Any]:
        """Scores of the next class after ``history`` ``(B, t)`` (BOS first), whose last ``new``
        tokens the cache has not seen yet."""
        if use_cache:
            logits, cache = self(history[:, -new:], cache)
        else:
            logits, _ = self(history)
        return logits[:, -1], cache

    @torch.no_grad()
    def generate(
        self,
        n: int,
        length: int,
        temperature: float = 1.0,
        prompt: torch.Tensor | None = None,
        top_k: int = 0,
        top_p: float = 1.0,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """``n`` sequences of ``length`` tokens, the primer's first, for the whole batch at once.

        ``temperature`` 0 is greedy decoding. ``top_k`` and ``top_p`` filter each step's
        distribution (`layers.sampling.filter_logits`). ``use_cache=False`` recomputes the whole
        prefix at every step (the reference that cached generation must equal).
        """
        history = torch.full((n, 1), self.bos_id, dtype=torch.long, device=self.device)
        if prompt is not None:
            history = torch.cat([history, prompt.to(self.device).long().reshape(n, -1)], dim=1)
        use_cache = use_cache and self.supports_cache
        cache, new = None, history.shape[1]
        while history.shape[1] - 1 < length:
            logits, cache = self.next_logits(history, cache, new, use_cache)
            classes = sample_logits(logits, temperature, top_k, top_p)
            tokens = self.classes_to_tokens(classes, history[:, 1:])
            history = torch.cat([history, tokens[:, None]], dim=1)
            new = 1
        return history[:, 1:]
