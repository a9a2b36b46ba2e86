"""MidiNet: a conditional convolutional GAN that writes music one bar at a time.

Yang, Chou and Yang, "MidiNet: A Convolutional Generative Adversarial Network for Symbolic-domain
Music Generation", ISMIR 2017, with the layer shapes of its reference code (``RichardYang40148/
MidiNet``, ``v1``). A bar is an image, ``tracks x w steps x h pitches`` (16 steps per 4/4 bar at the
default 4 steps per beat, the layout's pitch range), cut from the core's piano-roll.

::

    previous bar ──► conditioner CNN (4 convs) ──► features at w, w/2, w/4, w/8 steps ─┐
                                                                                       │ (concatenated)
    z (100) ⊕ chord (13) ──► dense 1024 ──► dense 128·w/8 ──► 4 transposed convs ◄────┘ ──► bar
                                                                  ▲ chord as 13 channels before each

    bar ⊕ chord ──► conv (2 x h) = f(x) ──► conv (4 x 1) ──► dense 1024 ──► real / fake

- **Conditions.** The 2-D condition is the previous bar; its conditioner features join the
  generator before its last ``condition_layers`` transposed convolutions (4: all of them, the
  "disciplined" model that follows the previous bar closely; 1: only the last, the "creative" one;
  0: none). The 1-D condition is the bar's chord (12 root pitch classes + minor flag), taken from
  the chord-symbol track where the data has one (``chord_track``; Nottingham: track 1) and else
  estimated from the bar's pitch classes (`estimate_chords`), so chord conditioning works on every
  source. Any other prior vector takes its place through `MidiNet.bar_conditions`: a batch that
  carries ``"condition"`` (``(batch, bars, condition_dim)``, from a datamodule of your own), or a
  subclass that computes it from the bars; sampling then takes the vectors as ``chords=<array>``.
- **Training** (manual optimisation, two optimisers): per batch one discriminator step, then
  ``generator_steps`` (2) generator steps on the same noise. The discriminator's real label is 0.9
  (one-sided label smoothing); the generator adds feature matching
  ``lambda1 ‖E X − E G(z)‖² + lambda2 ‖E f(X) − E f(G(z))‖²`` (means over the batch, ``f`` the
  discriminator's first convolution). Larger λ pull the bars toward the data's average (discipline),
  smaller ones leave the adversary freer (creativity).
- **Multi-track** (``tracks: all``, ``conf/model/midinet_multitrack.yaml``): one generator per track,
  each fed a shared latent vector and its own private one (MuseGAN's hybrid model), one conditioner
  over the previous bar of every track, one discriminator over all tracks; chords optional.
- **Sampling** runs bar by bar, each bar conditioned on the one before (silence, or a primer's last
  bar), under a chord progression (``chords="C G Am F"``, cycled; by default drawn from the chord
  transitions counted in the training data). A generated bar is a map of note probabilities; each
  step keeps as many of its most probable pitches as it expects (``round(Σ p)``; or, with
  ``binarize=threshold``, MuseGAN's hard threshold), and never more than the track held in 99 % of
  the training data's sounding steps (1 for a melody).
- **GAN health**, every epoch: ``train/d_loss``, ``train/g_loss``, ``train/d_real`` (D(x)),
  ``train/d_fake`` (D(G(z))), ``train/feature_matching``; ``val/loss`` (the generator's mean-bar
  distance to held-out bars: the checkpoint monitor), and a mode-collapse indicator:
  ``val/diversity`` (mean pairwise Hamming distance of a fixed batch of samples) beside
  ``val/diversity_real`` (the same for the real bars they answer).

Where this follows the reference code rather than the paper, or neither: z ~ N(0, 1) (the paper:
uniform); two generator steps per discriminator step (the paper: one); λ1 = 0.1 weights the
data-space term and λ2 = 0.01 the feature term, with plain squared norms (the reference code swaps
the two weights and halves the norms); lr 2e-4 (the paper; the code's default is 5e-5); batch-norm
uses running statistics when sampling (the reference keeps batch statistics, so its samples depend
on their batch); every layer is a 1-D convolution over time with the pitches as channels (the same
functions as the reference's 2-D ones, see *networks*), and a bar whose length is not a multiple of
8 steps is padded with silence for the networks (the generator doubles time three times).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import muspy
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.melody import MELODY_NAMES
from datamodules.notes import NoteTable
from datamodules.representations import MelodyRepresentation, PianoRollRepresentation, Representation
from lightning_modules.base import GenerativeModule, IncompatibleRepresentation
from muselab.errors import UserError

# ------------------------------------------------------------------------------------ chords
CHORD_DIM = 13  # 12 root pitch classes + 1 flag: minor (1) or major (0); all zeros: no chord
NO_CHORD = 24  # chord index of "no chord" (0..11: major on that root, 12..23: minor)
PITCH_CLASS_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_CHORD_SYMBOL = re.compile(r"^([A-Ga-g])([#b♯♭]*)(.*)$")
_NO_CHORD_SYMBOLS = {"n", "nc", "n.c.", "n.c", "x", "-", "none"}
# Added to a chord's score when its root is the bar's lowest pitch class: breaks the ties of
# four-note chords (C E G A is C6 over C, Am7 over A) the way the bass does.
BASS_BONUS = 0.1


def parse_chord(symbol: str) -> tuple[int, bool] | None:
    """``(root pitch class, minor)`` of a chord symbol (``"C"``, ``"Am"``, ``"F#m7"``, ``"Bb/D"``);
    None for "no chord" (``N``, ``N.C.``). Diminished chords count as minor (their third is), every
    other quality (7, maj7, sus4, aug, 6, 9, ...) as major. Raises `UserError` on anything else."""
    text = symbol.strip()
    if text.lower() in _NO_CHORD_SYMBOLS:
        return None
    match = _CHORD_SYMBOL.match(text)
    if not match:
        raise UserError(f"chords: {symbol!r} is not a chord symbol (e.g. C, Am, F#m, Bb7, N for none)")
    letter, accidentals, quality = match.groups()
    root = (_LETTERS[letter.upper()] + sum(1 if a in "#♯" else -1 for a in accidentals)) % 12
    quality = quality.split("/", 1)[0]
    minor = (quality.startswith("m") and not quality.startswith("maj")) or quality.startswith(
        ("-", "dim", "°", "o")
    )
    return root, minor


def chord_vector(chord: tuple[int, bool] | None) -> np.ndarray:
    """The 13-d condition of a chord (``(root, minor)``; None: all zeros)."""
    vector = np.zeros(CHORD_DIM, dtype=np.float32)
    if chord is not None:
        vector[chord[0] % 12] = 1.0
        vector[12] = float(chord[1])
    return vector


def parse_progression(chords: str | Sequence[str]) -> np.ndarray:
    """A progression (``"C G Am F"``; commas and bar lines also separate) as ``(bars, 13)``."""
    symbols = re.split(r"[\s,|]+", chords.strip()) if isinstance(chords, str) else list(chords)
    symbols = [s for s in symbols if str(s).strip()]
    if not symbols:
        raise UserError("chords: empty progression (give chord symbols such as chords='C G Am F')")
    return np.stack([chord_vector(parse_chord(str(s))) for s in symbols])


def chord_name(vector: np.ndarray | torch.Tensor) -> str:
    """The symbol of a 13-d chord condition (``"Am"``; ``"N"`` for none)."""
    vector = np.asarray(vector, dtype=np.float32)
    if not vector[:12].any():
        return "N"
    return PITCH_CLASS_NAMES[int(vector[:12].argmax())] + ("m" if vector[12] > 0.5 else "")


def chord_tones(chords: torch.Tensor) -> torch.Tensor:
    """``(..., 12)`` mask of the triad tones of ``(..., 13)`` chord conditions (none: no tones)."""
    root = chords[..., :12]
    minor = chords[..., 12:13]
    third = (1 - minor) * root.roll(4, dims=-1) + minor * root.roll(3, dims=-1)
    return ((root + third + root.roll(7, dims=-1)) > 0.5).to(chords.dtype)


def _templates(device: torch.device | None = None) -> torch.Tensor:
    """``(24, 12)``: the major triads on C..B, then the minor ones."""
    eye = torch.eye(12, device=device)
    major = torch.cat([eye, torch.zeros(12, 1, device=device)], dim=1)
    minor = torch.cat([eye, torch.ones(12, 1, device=device)], dim=1)
    return chord_tones(torch.cat([major, minor]))


def pitch_class_matrix(pitch_low: int, n_pitches: int, device: torch.device | None = None) -> torch.Tensor:
    """``(n_pitches, 12)`` one-hot pitch class of each pitch of a roll starting at ``pitch_low``."""
    classes = (torch.arange(n_pitches, device=device) + pitch_low) % 12
    return F.one_hot(classes, 12).float()


def estimate_chords(chroma: torch.Tensor, bass: torch.Tensor | None = None) -> torch.Tensor:
    """The major or minor triad that best explains each pitch-class profile, as 13-d conditions.

    ``chroma`` (``(..., 12)``, e.g. note-steps per pitch class in a bar) is normalised to sum one and
    scored against the 24 triad templates (the share of the bar's sound on the chord's tones);
    ``bass`` (``(...,)`` lowest pitch class, -1 for none) adds `BASS_BONUS` to chords on that root.
    Ties go to the lower root, major before minor. A silent profile gives no chord (zeros).
    """
    chroma = chroma.float()
    total = chroma.sum(-1, keepdim=True)
    templates = _templates(chroma.device)
    scores = (chroma / total.clamp_min(1e-9)) @ templates.T
    if bass is not None:
        roots = torch.arange(24, device=chroma.device) % 12
        scores = scores + BASS_BONUS * (bass[..., None] == roots).float()
    best = scores.argmax(-1)
    vector = torch.cat([F.one_hot(best % 12, 12).float(), (best >= 12).float()[..., None]], dim=-1)
    return vector * (total > 0).float()


def bar_chords(bars: torch.Tensor, pitch_low: int) -> torch.Tensor:
    """Chords of ``(..., steps, pitches)`` piano-roll bars (any tracks already summed in), ``(..., 13)``."""
    bars = bars.float()
    n_pitches = bars.shape[-1]
    chroma = bars.sum(-2) @ pitch_class_matrix(pitch_low, n_pitches, bars.device)
    sounding = bars.amax(-2) > 0  # (..., pitches)
    lowest = torch.where(
        sounding.any(-1), sounding.float().argmax(-1), torch.full_like(sounding[..., 0], -1, dtype=torch.long)
    )
    bass = torch.where(lowest >= 0, (lowest + pitch_low) % 12, lowest)
    return estimate_chords(chroma, bass)


def chord_index(chords: torch.Tensor) -> torch.Tensor:
    """0..11 major, 12..23 minor, `NO_CHORD` for none, from ``(..., 13)`` conditions."""
    root = chords[..., :12].argmax(-1) + 12 * (chords[..., 12] > 0.5).long()
    return torch.where(chords[..., :12].sum(-1) > 0.5, root, torch.full_like(root, NO_CHORD))


def chord_from_index(index: torch.Tensor) -> torch.Tensor:
    """The inverse of `chord_index`: ``(...,)`` indices to ``(..., 13)`` conditions."""
    some = (index < NO_CHORD).float()[..., None]
    root = F.one_hot(index.clamp_max(NO_CHORD - 1) % 12, 12).float()
    return torch.cat([root, (index >= 12).float()[..., None]], dim=-1) * some


def chord_tone_ratio(
    roll: np.ndarray, chords: np.ndarray, pitch_low: int, steps_per_bar: int, start: int = 0
) -> float | None:
    """Share of the notes of a one-track ``(steps, pitches)`` roll that start on a tone of the chord of
    their bar. ``chords`` is ``(bars, 13)``, bar ``b`` spanning ``start + b * steps_per_bar`` onward;
    notes in bars without a chord, or before ``start``, are not counted. None when no note counts.
    (For random pitch classes it is 0.25; for a diatonic melody over unrelated triads about 3/7.)"""
    roll = np.asarray(roll, dtype=bool)
    onsets = roll & ~np.concatenate([np.zeros_like(roll[:1]), roll[:-1]])
    steps, pitches = np.nonzero(onsets)
    keep = steps >= start
    bars = (steps[keep] - start) // steps_per_bar
    pitches = pitches[keep]
    chords = np.asarray(chords, dtype=np.float32)
    inside = bars < len(chords)
    bars, pitches = bars[inside], pitches[inside]
    with_chord = chords[bars, :12].sum(-1) > 0.5
    if not with_chord.any():
        return None
    tones = chord_tones(torch.from_numpy(chords)).numpy() > 0.5
    hit = tones[bars, (pitches + pitch_low) % 12]
    return float(hit[with_chord].mean())


# ------------------------------------------------------------------------------------ networks
# The reference's 2-D layers either span the whole pitch axis (1 x h, 2 x h kernels) or one pitch
# (k x 1), so every one of them is a 1-D convolution over time with the pitches folded into the
# channels: a (1 x h) convolution of C tracks is a Conv1d from C*h channels with kernel 1, a (k x 1)
# one a Conv1d with kernel k. Same functions, same shapes along time, and several times cheaper on
# a CPU than 2-D convolutions of one-pixel-wide maps. Maps below are (N, channels, steps).


def _block(layer: nn.Module, channels: int, norm: bool, leaky: bool) -> nn.Sequential:
    parts = [layer, *([nn.BatchNorm1d(channels)] if norm else [])]
    parts.append(nn.LeakyReLU(0.2) if leaky else nn.ReLU())
    return nn.Sequential(*parts)


def _with_condition(h: torch.Tensor, y: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
    """``h`` (N, C, T) with the 1-D condition ``y`` (N, D) as D constant channels, and ``extra`` maps."""
    return torch.cat([h, y[:, :, None].expand(-1, -1, h.shape[2]), *extra], dim=1)


def frame_steps(steps: int) -> int:
    """The steps the networks work on: a bar's, rounded up to a multiple of 8 (the generator doubles
    time three times); a shorter bar (e.g. 4 steps at one step per beat) is padded with silence."""
    return 8 * math.ceil(steps / 8)


def _fold(bars: torch.Tensor) -> torch.Tensor:
    """Bars ``(N, tracks, steps, pitches)`` as 1-D maps ``(N, tracks * pitches, frame steps)``."""
    folded = bars.transpose(2, 3).flatten(1, 2)
    return F.pad(folded, (0, frame_steps(folded.shape[-1]) - folded.shape[-1]))


class Conditioner(nn.Module):
    """The 2-D conditioner CNN over the previous bar: a ``1 x h`` convolution that reads each step's
    pitches, then ``2 x 1`` stride-2 convolutions halving time. Returns every layer's output, finest
    first: ``(N, channels, w / 2**i)`` for ``i`` in ``range(n_layers)``."""

    def __init__(self, tracks: int, n_pitches: int, channels: int = 16, n_layers: int = 4) -> None:
        super().__init__()
        layers = [_block(nn.Conv1d(tracks * n_pitches, channels, 1), channels, True, True)]
        layers += [
            _block(nn.Conv1d(channels, channels, 2, stride=2), channels, True, True)
            for _ in range(n_layers - 1)
        ]
        self.layers = nn.ModuleList(layers)

    def forward(self, previous: torch.Tensor) -> list[torch.Tensor]:
        features, h = [], _fold(previous)
        for layer in self.layers:
            h = layer(h)
            features.append(h)
        return features


class BarGenerator(nn.Module):
    """One bar from noise: dense → dense → 4 transposed convolutions (time ×2, ×2, ×2, then pitches).

    The 1-D condition joins the input, the second dense layer and every transposed convolution (as
    constant channels); conditioner features join the last ``condition_layers`` transposed
    convolutions at the matching time resolution. Returns logits ``(N, tracks, w, h)``.
    """

    def __init__(
        self,
        noise_dim: int,
        condition_dim: int,
        tracks: int,
        steps: int,
        n_pitches: int,
        hidden: int = 1024,
        channels: int = 128,
        conditioner_channels: int = 16,
        condition_layers: int = 4,
    ) -> None:
        super().__init__()
        self.channels, self.steps, self.start_steps = channels, steps, frame_steps(steps) // 8
        self.tracks, self.n_pitches = tracks, n_pitches
        self.condition_layers = condition_layers
        self.fc1 = _block(nn.Linear(noise_dim + condition_dim, hidden), hidden, True, False)
        start = channels * self.start_steps
        self.fc2 = _block(nn.Linear(hidden + condition_dim, start), start, True, False)
        ups = []
        for i in range(4):
            c_in = channels + condition_dim + (conditioner_channels if self.uses_previous(i) else 0)
            if i < 3:  # the reference's 2 x 1 transposed convolutions, stride 2: time doubles
                ups.append(_block(nn.ConvTranspose1d(c_in, channels, 2, stride=2), channels, True, False))
            else:  # its 1 x h transposed convolution: each step's features to that step's pitches
                ups.append(nn.ConvTranspose1d(c_in, tracks * n_pitches, 1))
        self.ups = nn.ModuleList(ups)

    def uses_previous(self, i: int) -> bool:
        """Whether transposed convolution ``i`` (0: the coarsest) gets the conditioner's features."""
        return i >= 4 - self.condition_layers

    def forward(self, z: torch.Tensor, y: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        h = self.fc2(torch.cat([self.fc1(torch.cat([z, y], dim=1)), y], dim=1))
        h = h.view(len(h), self.channels, self.start_steps)
        for i, up in enumerate(self.ups):
            extra = (features[3 - i],) if self.uses_previous(i) else ()
            h = up(_with_condition(h, y, *extra))
        return h.view(len(h), self.tracks, self.n_pitches, -1).transpose(2, 3)[:, :, : self.steps]


class BarDiscriminator(nn.Module):
    """Real or fake, given the 1-D condition: conv ``2 x h`` stride 2 (its output is the
    feature-matching ``f(x)``), conv ``4 x 1`` stride 2, dense, dense. Takes bars ``(N, tracks, w,
    h)``; returns ``(logits (N,), f(x) (N, c1, w / 2))``."""

    def __init__(
        self,
        tracks: int,
        condition_dim: int,
        steps: int,
        n_pitches: int,
        channels: Sequence[int] = (14, 77),
        hidden: int = 1024,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = _block(nn.Conv1d(tracks * n_pitches + condition_dim, c1, 2, stride=2), c1, False, True)
        self.conv2 = _block(nn.Conv1d(c1 + condition_dim, c2, 4, stride=2), c2, True, True)
        flat = c2 * ((frame_steps(steps) // 2 - 4) // 2 + 1)
        self.fc1 = _block(nn.Linear(flat + condition_dim, hidden), hidden, True, True)
        self.fc2 = nn.Linear(hidden + condition_dim, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv1(_with_condition(_fold(x), y))
        h = self.conv2(_with_condition(features, y)).flatten(1)
        h = self.fc1(torch.cat([h, y], dim=1))
        return self.fc2(torch.cat([h, y], dim=1)).squeeze(1), features


def _init_weights(module: nn.Module) -> None:
    # The reference's initialisation: N(0, 0.02) weights, zero biases (batch-norm left as built).
    if isinstance(module, nn.Conv1d | nn.ConvTranspose1d | nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)


def pairwise_distance(bars: torch.Tensor) -> float:
    """Mean Hamming distance (cells that differ) over all pairs of binary bars ``(N, ...)``."""
    flat = bars.flatten(1).float()
    if len(flat) < 2:
        return 0.0
    distances = torch.cdist(flat, flat, p=1)
    return float(distances.sum() / (len(flat) * (len(flat) - 1)))


# ------------------------------------------------------------------------------------ the model
class MidiNet(GenerativeModule):
    """MidiNet (and its multi-track variant): see the module docstring.

    Args:
        representation: a piano-roll representation (the bars are cut from it).
        tracks: what is generated: ``"melody"`` (one track, ``melody_track``), ``"all"`` (every track)
            or a list of track indices.
        melody_track: with ``tracks="melody"``: a track index, ``"auto"`` (the track named as a melody,
            e.g. ``soprano``; else the only track; else the skyline) or ``"skyline"`` (the highest
            note over all tracks at each step).
        chord_condition: condition on a 1-D vector per bar: its chord, or another prior vector
            (see `bar_conditions`).
        chord_track: the track that holds chord symbols as block chords (None: estimate each bar's
            chord from all its pitched notes; a bar whose chord track is silent is estimated too).
        condition_dim: size of the 1-D condition (13 for chords; another size is a prior vector of
            your own: batches that carry ``"condition"`` or a subclass's `bar_conditions`, and
            arrays as the ``chords`` sampling option).
        noise_dim: the latent vector every generator gets (shared between tracks).
        private_noise_dim: > 0: one generator per track, each with its own latent vector of this size
            beside the shared one (MuseGAN's hybrid model); 0: one generator for all tracks.
        condition_layers: how many of the generator's transposed convolutions (counted from the last)
            get the previous bar's conditioner features, 0..4.
        generator_hidden, generator_channels, conditioner_channels, discriminator_channels,
            discriminator_hidden: layer sizes (the reference's by default).
        lambda1: weight of the data-space feature matching ``‖E X − E G(z)‖²``.
        lambda2: weight of the feature-space term ``‖E f(X) − E f(G(z))‖²``.
        real_label: the discriminator's target for real bars (one-sided label smoothing).
        generator_steps: generator updates per discriminator update.
        start_rate: share of training pairs whose previous bar is replaced by silence, so that the
            model also learns to begin a piece (sampling without a primer starts from silence).
        binarize: how generated bars become notes: ``expected``, ``threshold`` or ``bernoulli``
            (see `binarize`).
        threshold: the threshold of ``binarize="threshold"``.
    """

    accepts_prompt: ClassVar[bool] = True

    def __init__(
        self,
        representation: Representation | dict[str, Any],
        tracks: str | Sequence[int] = "melody",
        melody_track: int | str = "auto",
        chord_condition: bool = True,
        chord_track: int | None = None,
        condition_dim: int = CHORD_DIM,
        noise_dim: int = 100,
        private_noise_dim: int = 0,
        condition_layers: int = 4,
        generator_hidden: int = 1024,
        generator_channels: int = 128,
        conditioner_channels: int = 16,
        discriminator_channels: Sequence[int] = (14, 77),
        discriminator_hidden: int = 1024,
        lambda1: float = 0.1,
        lambda2: float = 0.01,
        real_label: float = 0.9,
        generator_steps: int = 2,
        start_rate: float = 0.1,
        binarize: str = "expected",
        threshold: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(representation, **kwargs)
        self.save_model_hyperparameters()
        self.automatic_optimization = False
        if self.optimizer_factory is None:  # the paper's: Adam, lr 2e-4, beta1 0.5, for each network
            adam = partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999))
            self.optimizer_factory = {"generator": adam, "discriminator": adam}
        rep = self.representation
        if not isinstance(rep, PianoRollRepresentation):
            raise IncompatibleRepresentation(
                f"{type(self).__name__} needs a piano-roll representation (representation=pianoroll), "
                f"got a {rep.describe().kind!r} one"
            )
        self.steps_per_bar = rep.steps_per_bar()
        if not 0 <= condition_layers <= 4:
            raise UserError(f"model.condition_layers={condition_layers}: must be 0..4")
        if generator_steps < 1:
            raise UserError(f"model.generator_steps={generator_steps}: must be at least 1")
        if noise_dim + private_noise_dim <= 0:
            raise UserError("model.noise_dim + model.private_noise_dim must be positive")
        if chord_track is not None and not 0 <= chord_track < rep.n_tracks:
            raise UserError(f"model.chord_track={chord_track}: the layout has {rep.n_tracks} tracks")
        if chord_condition and condition_dim <= 0:
            raise UserError("model.condition_dim must be positive with model.chord_condition=true")
        self.n_pitches = rep.n_pitches
        self.skyline, self.channels = self._resolve_tracks(tracks, melody_track)
        self.melody = tracks == "melody"
        self.chord_track = chord_track
        self.condition_dim = condition_dim if chord_condition else 0
        self.noise_dim, self.private_noise_dim = noise_dim, private_noise_dim
        self.lambda1, self.lambda2 = lambda1, lambda2
        self.real_label, self.generator_steps = real_label, generator_steps
        self.start_rate, self.threshold = start_rate, threshold
        if binarize not in ("expected", "threshold", "bernoulli"):
            raise UserError(f"model.binarize={binarize!r}: expected, threshold or bernoulli")
        self.binarize_mode = binarize

        n_out = len(self.channels)
        self.conditioner = (
            Conditioner(n_out, self.n_pitches, conditioner_channels, condition_layers)
            if condition_layers
            else None
        )
        per_track = private_noise_dim > 0
        self.generators = nn.ModuleList(
            BarGenerator(
                noise_dim + private_noise_dim,
                self.condition_dim,
                1 if per_track else n_out,
                self.steps_per_bar,
                self.n_pitches,
                generator_hidden,
                generator_channels,
                conditioner_channels,
                condition_layers,
            )
            for _ in range(n_out if per_track else 1)
        )
        self.discriminator = BarDiscriminator(
            n_out,
            self.condition_dim,
            self.steps_per_bar,
            self.n_pitches,
            discriminator_channels,
            discriminator_hidden,
        )
        self.apply(_init_weights)
        # Counted from the real bars in training, kept in checkpoints: notes per sounding step per
        # track (how many a generated step may keep) and bar-to-bar chord transitions (the
        # progressions sampling draws when none is given).
        self.register_buffer("voice_counts", torch.zeros(n_out, self.n_pitches + 1))
        self.register_buffer("chord_transitions", torch.zeros(NO_CHORD + 1, NO_CHORD + 1))
        self.last_progression: tuple[torch.Tensor, int] | None = None
        self._fixed_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _resolve_tracks(self, tracks: str | Sequence[int], melody_track: int | str) -> tuple[bool, list[int]]:
        """``(skyline, channels)``: whether the melody is the skyline of all tracks, and the
        representation's channels the generated tracks come from and go to."""
        rep = self.representation
        pitched = rep.pitched_tracks
        if tracks == "all":
            return False, list(range(rep.n_tracks))
        if tracks != "melody":
            channels = [int(t) for t in tracks]
            if not channels or any(not 0 <= c < rep.n_tracks for c in channels):
                raise UserError(f"model.tracks={list(tracks)}: track indices 0..{rep.n_tracks - 1}")
            return False, channels
        if isinstance(melody_track, str) and melody_track.lstrip("-").isdigit():
            melody_track = int(melody_track)
        if melody_track == "auto":
            named = [c for c in pitched if rep.track_name(c).lower().startswith(MELODY_NAMES)]
            if named:
                return False, named[:1]
            if len(pitched) == 1:
                return False, pitched
            return True, pitched[:1]
        if melody_track in ("skyline", -1):
            return True, pitched[:1]
        if not isinstance(melody_track, int) or not 0 <= melody_track < len(pitched):
            raise UserError(
                f"model.melody_track={melody_track!r}: auto, skyline or a pitched track index 0..{len(pitched) - 1}"
            )
        return False, [pitched[melody_track]]

    def optimizer_parameters(self, name: str) -> list[nn.Parameter]:
        if name == "generator":
            return [
                *(self.conditioner.parameters() if self.conditioner else []),
                *self.generators.parameters(),
            ]
        if name == "discriminator":
            return list(self.discriminator.parameters())
        raise ValueError(f"MidiNet has a generator and a discriminator optimiser, not {name!r}")

    # ----------------------------------------------------------------------------- bars
    def generated_tracks(self, roll: torch.Tensor) -> torch.Tensor:
        """The generated tracks of ``(..., steps, tracks, pitches)`` rolls: ``(..., steps, n_out, pitches)``."""
        if not self.skyline:
            return roll[..., self.channels, :]
        sounding = roll[..., self.representation.pitched_tracks, :].amax(-2)  # (..., steps, pitches)
        highest = self.n_pitches - 1 - sounding.flip(-1).argmax(-1, keepdim=True)
        top = torch.zeros_like(sounding).scatter_(-1, highest, 1.0) * sounding.amax(-1, keepdim=True)
        return top.unsqueeze(-2)

    def chords_of(self, bars: torch.Tensor) -> torch.Tensor:
        """Chord conditions ``(..., 13)`` of ``(..., steps, tracks, pitches)`` bars: from the chord
        track where it sounds, else estimated from every pitched track."""
        rep = self.representation
        everything = bar_chords(bars[..., rep.pitched_tracks, :].sum(-2), rep.pitch_low)
        if self.chord_track is None:
            return everything
        symbols = bar_chords(bars[..., self.chord_track, :], rep.pitch_low)
        has_symbol = symbols[..., :12].sum(-1, keepdim=True) > 0
        return torch.where(has_symbol, symbols, everything)

    @property
    def conditions_are_chords(self) -> bool:
        """Whether the 1-D condition is the chord (the default `bar_conditions`), so that sampling
        can draw progressions and play them."""
        return self.condition_dim == CHORD_DIM and type(self).bar_conditions is MidiNet.bar_conditions

    def bar_conditions(self, bars: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The 1-D condition ``(B, n_bars, condition_dim)`` of ``(B, n_bars, steps, tracks, pitches)``
        bars: the batch's ``"condition"`` where it carries one (``(B, >= n_bars, condition_dim)``,
        from a datamodule of your own), else the bars' chords (`chords_of`). Override it to condition
        on any other prior vector computed from the music."""
        if "condition" in batch:
            return batch["condition"].float()[:, : bars.shape[1]]
        return self.chords_of(bars)

    def pairs(
        self, batch: Mapping[str, torch.Tensor], training: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(previous, current, condition)`` bar pairs of a batch of windows of two or more bars:
        ``(N, n_out, w, h)``, ``(N, n_out, w, h)``, ``(N, condition_dim)``. Pairs that reach into
        padding are dropped. In training, the real bars' statistics are counted too."""
        x = batch["x"].float()
        w = self.steps_per_bar
        n_bars = x.shape[1] // w
        if n_bars < 2:
            raise UserError(
                f"MidiNet trains on windows of two bars or more: data.window={x.shape[1]} steps is less "
                f"than 2 x {w} (set data.window={2 * w} data.stride={w})"
            )
        bars = x[:, : n_bars * w].reshape(len(x), n_bars, w, *x.shape[2:])
        real = batch["mask"][:, : n_bars * w].reshape(len(x), n_bars, w).all(-1)
        generated = self.generated_tracks(bars).transpose(2, 3)  # (B, bars, n_out, w, h)
        chords = None
        if self.condition_dim:
            condition = self.bar_conditions(bars, batch)
            expected = (len(x), n_bars, self.condition_dim)
            if tuple(condition.shape) != expected:
                why = (
                    "the batch's 'condition' does not match model.condition_dim"
                    if "condition" in batch
                    else f"model.condition_dim={self.condition_dim} is not the {CHORD_DIM} of a chord; another "
                    "prior vector comes from batches with 'condition' or a subclass's bar_conditions"
                )
                raise UserError(
                    f"MidiNet conditions of shape {tuple(condition.shape)}, expected {expected} "
                    f"(batch, bars, model.condition_dim): {why}"
                )
            if "condition" not in batch and self.conditions_are_chords:
                chords = condition
        else:
            condition = x.new_zeros(len(x), n_bars, 0)
        keep = real[:, :-1] & real[:, 1:]
        previous, current = generated[:, :-1][keep], generated[:, 1:][keep]
        condition = condition[:, 1:][keep]
        if training:
            self._count(current, chords, keep)
            if self.start_rate > 0 and len(previous):
                starts = torch.rand(len(previous), device=x.device) < self.start_rate
                previous = previous * (~starts).float()[:, None, None, None]
        return previous, current, condition

    @torch.no_grad()
    def _count(self, current: torch.Tensor, chords: torch.Tensor | None, keep: torch.Tensor) -> None:
        """Add real bars to `voice_counts` and their chords' bar-to-bar moves to `chord_transitions`."""
        notes = current.sum(-1).long()  # (N, n_out, w): notes per step
        for c in range(len(self.channels)):
            self.voice_counts[c] += torch.bincount(
                notes[:, c].flatten(), minlength=self.n_pitches + 1
            ).float()
        if chords is not None and chords.shape[-1] == CHORD_DIM:
            index = chord_index(chords)  # (B, bars)
            moves = (index[:, :-1] * (NO_CHORD + 1) + index[:, 1:])[keep]
            counts = torch.bincount(moves, minlength=(NO_CHORD + 1) ** 2).float()
            self.chord_transitions += counts.view(NO_CHORD + 1, NO_CHORD + 1)

    def max_voices(self) -> list[int]:
        """Per generated track, the most notes a step keeps: what covers 99 % of the training data's
        sounding steps (0: no limit, before any training)."""
        limits = []
        for counts in self.voice_counts:
            sounding = counts[1:]
            if sounding.sum() == 0:
                limits.append(0)
                continue
            share = sounding.cumsum(0) / sounding.sum()
            limits.append(int((share < 0.99).sum()) + 1)
        return limits

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latent vectors ``(n, generators, noise_dim + private_noise_dim)``: the shared part is the
        same for every generator, the private part each one's own."""
        shared = torch.randn(n, 1, self.noise_dim, device=self.device, generator=generator)
        shared = shared.expand(-1, len(self.generators), -1)
        private = torch.randn(
            n, len(self.generators), self.private_noise_dim, device=self.device, generator=generator
        )
        return torch.cat([shared, private], dim=-1)

    def bar_logits(self, z: torch.Tensor, previous: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Generated bars as logits ``(N, n_out, w, h)`` from latent vectors, previous bars and conditions."""
        features = self.conditioner(previous) if self.conditioner is not None else []
        return torch.cat([g(z[:, i], condition, features) for i, g in enumerate(self.generators)], dim=1)

    def binarize(
        self, probabilities: torch.Tensor, binarize: str | None = None, threshold: float | None = None
    ) -> torch.Tensor:
        """Notes of generated bars ``(N, n_out, w, h)`` from their probabilities, by ``binarize``:

        - ``expected``: each step keeps its ``round(Σ p)`` most probable pitches (the number of notes
          the step expects), at most `max_voices`. A generator that spreads a melody note over
          neighbouring pitches still plays one note where the data would;
        - ``threshold``: cells above ``threshold`` (MuseGAN's hard threshold), at most `max_voices`
          per step (the most probable);
        - ``bernoulli``: each cell drawn, at most `max_voices` per step.
        """
        binarize = binarize or self.binarize_mode
        limits = torch.tensor(
            [v or self.n_pitches for v in self.max_voices()], device=probabilities.device
        ).view(1, -1, 1)
        if binarize == "expected":
            count = probabilities.sum(-1).round().long().minimum(limits)  # (N, n_out, w)
        elif binarize in ("threshold", "bernoulli"):
            if binarize == "bernoulli":
                chosen = torch.bernoulli(probabilities) > 0
            else:
                chosen = probabilities > (self.threshold if threshold is None else threshold)
            count = chosen.sum(-1).minimum(limits)
            probabilities = torch.where(chosen, probabilities, probabilities - 2.0)  # chosen ones first
        else:
            raise UserError(f"binarize={binarize!r}: expected, threshold or bernoulli")
        rank = probabilities.argsort(-1, descending=True).argsort(-1)  # 0: the most probable pitch
        return (rank < count[..., None]).float()

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        previous, real, condition = self.pairs(batch, training=True)
        if len(real) < 2:  # batch-norm needs two examples
            return
        g_opt, d_opt = self.optimizers()
        z = self.noise(len(real))

        with self.toggled_optimizer(d_opt):
            fake = torch.sigmoid(self.bar_logits(z, previous, condition)).detach()
            real_logit, _ = self.discriminator(real, condition)
            fake_logit, _ = self.discriminator(fake, condition)
            d_loss = F.binary_cross_entropy_with_logits(
                real_logit, torch.full_like(real_logit, self.real_label)
            ) + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
            d_opt.zero_grad()
            self.manual_backward(d_loss)
            self.clip(d_opt)
            d_opt.step()

        with self.toggled_optimizer(g_opt):
            for _ in range(self.generator_steps):
                fake = torch.sigmoid(self.bar_logits(z, previous, condition))
                g_logit, fake_features = self.discriminator(fake, condition)
                with torch.no_grad():
                    _, real_features = self.discriminator(real, condition)
                adversarial = F.binary_cross_entropy_with_logits(g_logit, torch.ones_like(g_logit))
                matching = (
                    self.lambda1 * (real.mean(0) - fake.mean(0)).pow(2).sum()
                    + self.lambda2 * (real_features.mean(0) - fake_features.mean(0)).pow(2).sum()
                )
                g_loss = adversarial + matching
                g_opt.zero_grad()
                self.manual_backward(g_loss)
                self.clip(g_opt)
                g_opt.step()

        self.log_figures(
            {
                "loss": d_loss.detach() + g_loss.detach(),
                "d_loss": d_loss.detach(),
                "g_loss": g_loss.detach(),
                "d_real": torch.sigmoid(real_logit).mean().detach(),
                "d_fake": torch.sigmoid(fake_logit).mean().detach(),
                "feature_matching": matching.detach(),
            },
            "train",
            batch_size=len(real),
        )

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """On held-out bars: ``loss`` = ‖E X − E G(z)‖² (the data-space feature-matching distance,
        with fixed noise), and the discriminator's mean output on real and generated bars."""
        return self._held_out_figures(*self.pairs(batch))

    def _held_out_figures(
        self, previous: torch.Tensor, real: torch.Tensor, condition: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        z = self.noise(len(real), torch.Generator(self.device).manual_seed(0))
        fake = torch.sigmoid(self.bar_logits(z, previous, condition))
        real_logit, _ = self.discriminator(real, condition)
        fake_logit, _ = self.discriminator(fake, condition)
        return {
            "loss": (real.mean(0) - fake.mean(0)).pow(2).sum(),
            "d_real": torch.sigmoid(real_logit).mean(),
            "d_fake": torch.sigmoid(fake_logit).mean(),
        }

    def _held_out_step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor | None:
        previous, real, condition = self.pairs(batch)
        if not len(real):  # windows of padding only: nothing to score
            return None
        if split == "val" and self._fixed_batch is None:
            self._fixed_batch = (previous[:64], real[:64], condition[:64])
        figures = self._held_out_figures(previous, real, condition)
        self.log_figures(figures, split, batch_size=len(real))
        return figures["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        return self._held_out_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        return self._held_out_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if self._fixed_batch is not None:
            fake, real = self.diversity(*self._fixed_batch)
            self.log("val/diversity", fake)
            self.log("val/diversity_real", real)

    @torch.no_grad()
    def diversity(
        self, previous: torch.Tensor, real: torch.Tensor, condition: torch.Tensor, seed: int = 1
    ) -> tuple[float, float]:
        """The mode-collapse indicator: the mean pairwise Hamming distance of the bars generated for a
        batch of (previous bar, condition) pairs with fixed noise, and the same figure for the real
        bars of those pairs. A collapsed generator makes the first far smaller than the second."""
        z = self.noise(len(real), torch.Generator(self.device).manual_seed(seed))
        fake = self.binarize(torch.sigmoid(self.bar_logits(z, previous, condition)))
        return pairwise_distance(fake), pairwise_distance(real)

    # ----------------------------------------------------------------------------- sampling
    def encode_prompt(
        self, prompt: muspy.Music | NoteTable | np.ndarray | torch.Tensor, n: int
    ) -> torch.Tensor:
        """A primer; for a melody model, the primer's melody (its track named as one, its only track,
        or its highest voice) goes to the melody track whatever the primer's layout."""
        if self.melody and isinstance(prompt, muspy.Music | NoteTable):
            rep = self.representation
            reader = MelodyRepresentation(rep.pitch_low, rep.pitch_high, rep.steps_per_beat, track="auto")
            onset, end, pitch = reader.melody(prompt)
            roll = np.zeros((int(end.max()) if len(end) else 0, rep.n_tracks, rep.n_pitches), dtype=bool)
            for o, e, p in zip(onset, end, pitch):
                roll[o:e, self.channels[0], p - rep.pitch_low] = True
            prompt = roll
        return super().encode_prompt(prompt, n)

    def progression(
        self, n: int, n_bars: int, chords: Any = None, after: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(n, n_bars, condition_dim)`` conditions: ``chords`` (symbols or an array, cycled to
        ``n_bars``) or, without it, progressions drawn from the training data's chord transitions,
        continuing from the chords ``after`` (``(n, 13)``, e.g. a primer's last bar)."""
        if chords is not None:
            if isinstance(chords, str) or (
                isinstance(chords, Sequence) and chords and isinstance(chords[0], str)
            ):
                given = torch.from_numpy(parse_progression(chords))
            else:
                given = torch.as_tensor(np.asarray(chords), dtype=torch.float32)
            if given.shape[-1] != self.condition_dim:
                raise UserError(
                    f"chords: conditions of size {given.shape[-1]}, the model takes {self.condition_dim}"
                )
            given = (
                given.to(self.device).expand(n, *given.shape[-2:])
                if given.dim() == 2
                else given.to(self.device)
            )
            repeats = math.ceil(n_bars / given.shape[1])
            return given.repeat(1, repeats, 1)[:, :n_bars]
        if not self.conditions_are_chords:
            raise UserError(
                f"this model's condition is a {self.condition_dim}-d prior vector: give it as chords=<array>"
            )
        counts = self.chord_transitions + 1e-3  # every chord stays reachable
        state = (
            chord_index(after) if after is not None else torch.multinomial(counts.sum(0), n, replacement=True)
        )
        out = []
        for b in range(n_bars):
            state = torch.multinomial(counts[state], 1).squeeze(1) if (b or after is not None) else state
            out.append(state)
        return chord_from_index(torch.stack(out, dim=1))

    @torch.no_grad()
    def generate(
        self,
        n: int,
        length: int,
        temperature: float = 1.0,
        prompt: torch.Tensor | None = None,
        chords: str | Sequence[str] | np.ndarray | None = None,
        binarize: str | None = None,
        threshold: float | None = None,
    ) -> torch.Tensor:
        """``n`` pieces of ``length`` steps, bar by bar, each bar conditioned on the one before.

        Args:
            temperature: scales the latent vectors (0: the mean bar of each condition).
            prompt: an encoded primer; its last bar starts the chain (default: a silent bar).
            chords: the progression, one chord per bar, cycled (``"C G Am F"``, a list of symbols,
                or an array of conditions); default: drawn from the training data's transitions.
            binarize: ``expected``, ``threshold`` or ``bernoulli`` (see `binarize`; default: the
                model's ``binarize``).
            threshold: the threshold of ``binarize=threshold`` (default: the model's).
        """
        rep, w = self.representation, self.steps_per_bar
        if chords is not None and not self.condition_dim:
            raise UserError(
                "chords: this model was trained without chord conditioning (model.chord_condition=false)"
            )
        out = torch.zeros(n, length, rep.n_tracks, rep.n_pitches, device=self.device)
        previous = torch.zeros(n, len(self.channels), w, self.n_pitches, device=self.device)
        start, after = 0, None
        if prompt is not None:
            primer = prompt.to(self.device).float()
            start = primer.shape[1]
            out[:, :start] = primer
            last = out.new_zeros(n, w, rep.n_tracks, rep.n_pitches)
            last[:, w - min(w, start) :] = primer[:, max(0, start - w) :]
            previous = self.generated_tracks(last).transpose(1, 2)
            if self.conditions_are_chords and chords is None:
                after = self.chords_of(last)
        n_bars = math.ceil((length - start) / w)
        condition = (
            self.progression(n, n_bars, chords, after)
            if self.condition_dim
            else torch.zeros(n, n_bars, 0, device=self.device)
        )
        for b in range(n_bars):
            z = self.noise(n) * temperature
            bar = self.binarize(
                torch.sigmoid(self.bar_logits(z, previous, condition[:, b])), binarize, threshold
            )
            steps = min(w, length - start - b * w)
            at = start + b * w
            out[:, at : at + steps, self.channels] = bar.transpose(1, 2)[:, :steps]
            previous = bar
        self.last_progression = (condition, start) if self.conditions_are_chords else None
        return out > 0.5

    def sample_options(self) -> list[str]:
        return [*super().sample_options(), "play_chords"]

    def sample(
        self,
        n: int,
        length: int | None = None,
        temperature: float = 1.0,
        prompt: muspy.Music | NoteTable | np.ndarray | torch.Tensor | None = None,
        play_chords: bool | None = None,
        **options: Any,
    ) -> list[muspy.Music]:
        """`GenerativeModule.sample`, keeping the generated tracks only, plus (``play_chords``; by
        default when the model is chord-conditioned and does not generate the chord track itself) a
        ``chords`` track that plays the progression as block chords."""
        self.last_progression = None
        musics = super().sample(n, length, temperature, prompt, **options)
        if play_chords is None:
            play_chords = self.chord_track not in self.channels
        progression, start = self.last_progression if play_chords and self.last_progression else (None, 0)
        return [
            self.finish(m, None if progression is None else progression[i], start)
            for i, m in enumerate(musics)
        ]

    def finish(
        self, music: muspy.Music, progression: torch.Tensor | None = None, start: int = 0
    ) -> muspy.Music:
        """A decoded piece as the model gives it: its generated tracks only (in place), and with a
        progression (``(bars, 13)`` from step ``start``) a ``chords`` track that plays it."""
        music.tracks = [music.tracks[c] for c in self.channels]
        if self.melody and (self.skyline or music.tracks[0].name == f"track{self.channels[0]}"):
            music.tracks[0].name = "melody"  # the skyline, or a track the layout gives no name
        if progression is not None:
            music.tracks.append(self.chord_track_music(progression, start, music.get_end_time()))
        return music

    def chord_track_music(self, condition: torch.Tensor, start: int, end: int) -> muspy.Track:
        """A progression (``(bars, 13)`` from step ``start``) as a track of block triads, C3..B4."""
        rep = self.representation
        program = rep.programs[self.chord_track] if self.chord_track is not None else 0
        tones = chord_tones(condition.float().cpu()).numpy() > 0.5
        notes = []
        for b, chord in enumerate(condition.float().cpu().numpy()):
            onset = start + b * self.steps_per_bar
            duration = min(self.steps_per_bar, end - onset)
            if duration <= 0 or not chord[:12].any():
                continue
            root = int(chord[:12].argmax())
            for pc in np.flatnonzero(tones[b]):
                notes.append(muspy.Note(onset, 48 + root + (pc - root) % 12, duration, 60))
        return muspy.Track(
            program=program, name="chords", notes=sorted(notes, key=lambda n: (n.time, n.pitch))
        )
