"""`PianoRollModule`: the base of autoregressive frame models over multi-track piano-rolls.

A frame model reads the frames before ``t`` through a causal *context* network (an RNN, dilated
convolutions, ...) and an output *head* (`layers.heads`: independent Bernoulli, NADE) scores and
samples the whole multi-hot frame ``t``: every track and pitch at once, so chords of any shape are
possible. The loss is the NLL in nats per frame, summed over tracks x pitches.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from datamodules.representations import Representation
from lightning_modules.base import GenerativeModule, IncompatibleRepresentation


class PianoRollModule(GenerativeModule):
    """Base of autoregressive frame models over multi-track piano-rolls.

    A subclass provides a causal ``context(x_in, cond) -> h`` over the flattened frames (``x_in[t]``
    is frame ``t-1``; frame -1 is silence), ``init_state(n, cond)`` / ``step(frame, state) -> (h,
    state)`` for generation, and ``self.head``. ``cond`` is an optional per-piece condition (class
    ids) that a batch may carry as ``"cond"``; models without conditioning ignore it.
    """

    accepts_prompt: ClassVar[bool] = True

    def __init__(self, representation: Representation | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(representation, **kwargs)
        info = self.representation.describe()
        if info.kind != "pianoroll":
            raise IncompatibleRepresentation(
                f"{type(self).__name__} needs a piano-roll representation (representation=pianoroll), "
                f"got a {info.kind!r} one"
            )
        self.n_tracks, self.n_pitches = info.shape_per_step
        self.units = self.n_tracks * self.n_pitches

    def context(self, x_in: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def init_state(self, n: int, cond: torch.Tensor | int | None = None) -> Any:
        raise NotImplementedError

    def step(self, frame: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def frame_nll(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """NLL in nats of every frame, (B, T), each predicted from the frames before it."""
        frames = x.reshape(x.shape[0], x.shape[1], -1)
        x_in = torch.cat([frames.new_zeros(frames.shape[0], 1, frames.shape[2]), frames[:, :-1]], dim=1)
        return self.head.nll(self.context(x_in, cond), frames)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nll = self.frame_nll(batch["x"], batch.get("cond"))
        mask = batch["mask"].to(nll.dtype)
        return {"loss": (nll * mask).sum() / mask.sum().clamp_min(1.0)}

    @torch.no_grad()
    def generate(
        self, n: int, length: int, temperature: float = 1.0, prompt: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.generate_frames(n, length, temperature, prompt, self.init_state(n))

    def generate_frames(
        self, n: int, length: int, temperature: float, prompt: torch.Tensor | None, state: Any
    ) -> torch.Tensor:
        """Run the model frame by frame from ``state``: the primer's frames first, then samples."""
        frame = torch.zeros(n, self.units, device=self.device)
        out = []
        if prompt is not None:
            prompt = prompt.to(self.device, torch.float32).reshape(n, -1, self.units)
            for t in range(prompt.shape[1]):
                _, state = self.step(frame, state)
                frame = prompt[:, t]
                out.append(frame)
        for _ in range(length - len(out)):
            h, state = self.step(frame, state)
            frame = self.head.sample(h, temperature)
            out.append(frame)
        return torch.stack(out, dim=1).reshape(n, length, self.n_tracks, self.n_pitches)
