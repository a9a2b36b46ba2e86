"""MidiNet and its multi-track variant (`lightning_modules.midinet`): chords from symbols and from
notes, the reference's layer shapes, conditioning that really conditions, the adversarial training
step under the default trainer config, real training runs, and samples that follow a progression."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import hydra
import lightning as L
import muspy
import numpy as np
import pytest
import torch

from datamodules import MusicDataModule
from datamodules.representations import PianoRollRepresentation
from datamodules.sources import FolderSource
from lightning_modules.base import load_model
from lightning_modules.midinet import (
    MidiNet,
    bar_chords,
    chord_from_index,
    chord_index,
    chord_name,
    chord_tone_ratio,
    chord_vector,
    estimate_chords,
    pairwise_distance,
    parse_chord,
    parse_progression,
)
from muselab.errors import UserError
from muselab.music.evaluation import n_bars, write_midi
from muselab.train import train
from muselab.utils import instantiate_checked
from tests.conftest import bach_representation
from tests.helpers import compose_train

torch.set_num_threads(1)

# Small layer sizes: the tests check behaviour, not capacity.
SMALL = {
    "generator_hidden": 64,
    "generator_channels": 16,
    "conditioner_channels": 8,
    "discriminator_channels": (8, 16),
    "discriminator_hidden": 32,
}
SMALL_OVERRIDES = [f"model.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in SMALL.items()]
MAJOR_MINOR = [(root, minor) for minor in (False, True) for root in range(12)]


def lead_sheet_representation(pitch_low: int = 36) -> PianoRollRepresentation:
    """Melody + chord-symbol tracks, as the Nottingham layout."""
    return PianoRollRepresentation(n_tracks=2, track_mode="index", pitch_low=pitch_low, pitch_high=96)


def roll_of(notes: list[tuple[int, int, int, int]], steps: int, rep: PianoRollRepresentation) -> torch.Tensor:
    """A ``(steps, tracks, pitches)`` roll from ``(track, pitch, onset, end)`` notes."""
    roll = torch.zeros(steps, rep.n_tracks, rep.n_pitches)
    for track, pitch, onset, end in notes:
        roll[onset:end, track, pitch - rep.pitch_low] = 1
    return roll


# ------------------------------------------------------------------------------------ chords
def test_chord_symbols() -> None:
    assert parse_chord("C") == (0, False)
    assert parse_chord("Am") == (9, True)
    assert parse_chord("F#m7") == (6, True)
    assert parse_chord("Bb") == (10, False)
    assert parse_chord("Ebmaj7") == (3, False)
    assert parse_chord("G7/B") == (7, False)
    assert parse_chord("Bdim") == (11, True)
    assert parse_chord("Dsus4") == (2, False)
    assert parse_chord("Cb") == (11, False)
    assert parse_chord("N.C.") is None
    with pytest.raises(UserError, match="'H7' is not a chord symbol"):
        parse_chord("H7")
    progression = parse_progression("C G | Am, F N")
    assert progression.shape == (5, 13)
    assert [chord_name(v) for v in progression] == ["C", "G", "Am", "F", "N"]
    assert chord_vector((9, True)).tolist() == [0] * 9 + [1, 0, 0, 1]
    with pytest.raises(UserError, match="empty progression"):
        parse_progression(" ")
    # Chord indices: 0..11 major, 12..23 minor, 24 none, and back.
    index = chord_index(torch.from_numpy(progression))
    assert index.tolist() == [0, 7, 21, 5, 24]
    assert torch.equal(chord_from_index(index), torch.from_numpy(progression))


@pytest.mark.parametrize("inversion", [0, 1, 2])
def test_every_block_triad_is_recognised_in_every_inversion(inversion: int) -> None:
    for root, minor in MAJOR_MINOR:
        tones = [root, root + (3 if minor else 4), root + 7]
        pitches = [48 + t for t in tones]
        pitches = [p + 12 if i < inversion else p for i, p in enumerate(pitches)]
        bar = torch.zeros(16, 61)
        for p in pitches:
            bar[:, p - 36] = 1
        chord = bar_chords(bar, pitch_low=36)
        assert chord_name(chord) == chord_name(chord_vector((root, minor))), (root, minor, inversion)


def test_chord_estimation_on_hand_made_bars() -> None:
    def chord_of(pitch_steps: dict[int, int]) -> str:
        bar = torch.zeros(16, 61)
        t = 0
        for pitch, steps in pitch_steps.items():
            bar[t : t + steps, pitch - 36] = 1
            t += steps
        return chord_name(bar_chords(bar, pitch_low=36))

    # An arpeggio with a passing note: C E G plus D.
    assert chord_of({60: 4, 62: 2, 64: 4, 67: 6}) == "C"
    # Four notes, two triads inside: the bass decides (C6 over C, Am7 over A).
    assert chord_of({48: 4, 64: 4, 67: 4, 69: 4}) == "C"
    assert chord_of({45: 4, 60: 4, 64: 4, 67: 4}) == "Am"
    # A minor melody line: A C E with B.
    assert chord_of({69: 6, 71: 2, 72: 4, 76: 4}) == "Am"
    assert chord_of({}) == "N"
    # Batched: leading dimensions are kept.
    chroma = torch.zeros(3, 2, 12)
    chroma[..., [7, 11, 2]] = 1
    assert estimate_chords(chroma).shape == (3, 2, 13)
    assert chord_name(estimate_chords(chroma)[2, 1]) == "G"


def test_chord_tone_ratio_by_hand() -> None:
    rep = lead_sheet_representation()
    roll = np.zeros((32, rep.n_pitches), dtype=bool)
    roll[0:4, 60 - 36] = True  # C over C: a chord tone
    roll[4:8, 62 - 36] = True  # D over C: not
    roll[8:16, 64 - 36] = True  # E over C: a chord tone
    roll[16:20, 67 - 36] = True  # G over Am: not
    roll[20:24, 69 - 36] = True  # A over Am: a chord tone
    chords = parse_progression("C Am")
    assert chord_tone_ratio(roll, chords, 36, 16) == pytest.approx(3 / 5)
    assert chord_tone_ratio(roll, parse_progression("C N"), 36, 16) == pytest.approx(2 / 3)
    # Bars counted from `start`: the first 16 steps (a primer) are left out.
    assert chord_tone_ratio(roll, parse_progression("Am"), 36, 16, start=16) == pytest.approx(1 / 2)
    assert chord_tone_ratio(roll, parse_progression("N N"), 36, 16) is None


def test_chords_come_from_the_chord_track_where_it_sounds_else_from_the_notes() -> None:
    rep = lead_sheet_representation()
    model = MidiNet(rep, chord_track=1, **SMALL)
    # Bar 0: melody C E G over a written "Am" (A C E); bar 1: the same melody, no chord symbol.
    melody = [(0, 60, 0, 4), (0, 64, 4, 8), (0, 67, 8, 16), (0, 60, 16, 20), (0, 64, 20, 24), (0, 67, 24, 32)]
    symbols = [(1, p, 0, 16) for p in (45, 48, 52)]
    bars = roll_of(melody + symbols, 32, rep).reshape(2, 16, 2, rep.n_pitches)
    assert [chord_name(c) for c in model.chords_of(bars)] == ["Am", "C"]
    # Without a chord track, both bars are estimated from all their notes.
    estimated = MidiNet(rep, chord_track=None, **SMALL).chords_of(bars)
    assert [chord_name(c) for c in estimated] == ["Am", "C"]  # bar 0: A C E dominate
    only_melody = roll_of(melody, 32, rep).reshape(2, 16, 2, rep.n_pitches)
    assert [chord_name(c) for c in model.chords_of(only_melody)] == ["C", "C"]


def test_melody_track_choice_and_skyline() -> None:
    assert MidiNet(bach_representation(), **SMALL).channels == [0]  # "soprano" by name
    rep = PianoRollRepresentation(n_tracks=3, track_mode="index", pitch_low=48, pitch_high=72)
    skyline = MidiNet(rep, melody_track="auto", **SMALL)
    assert skyline.skyline and skyline.channels == [0]
    assert MidiNet(rep, melody_track=2, **SMALL).channels == [2]
    assert MidiNet(rep, tracks="all", **SMALL).channels == [0, 1, 2]
    roll = roll_of([(0, 60, 0, 2), (1, 67, 1, 3), (2, 55, 0, 4)], 4, rep)
    top = skyline.generated_tracks(roll)[:, 0]  # (steps, pitches)
    assert [int(r.argmax()) + 48 if r.any() else None for r in top] == [60, 67, 67, 55]
    assert top.sum(-1).tolist() == [1, 1, 1, 1]
    # A melody model's track is called what the layout calls it, else "melody".
    assert [t.name for t in skyline.sample(1, 16)[0].tracks] == ["melody", "chords"]
    lead_sheet = MidiNet(lead_sheet_representation(), melody_track=0, chord_track=1, **SMALL)
    assert [t.name for t in lead_sheet.sample(1, 16)[0].tracks] == ["melody", "chords"]
    with pytest.raises(UserError, match="melody_track=5"):
        MidiNet(rep, melody_track=5, **SMALL)


@pytest.mark.parametrize(("steps_per_beat", "frame"), [(1, 8), (3, 16), (4, 16), (6, 24)])
def test_bars_of_any_length_are_padded_to_what_the_networks_double(steps_per_beat: int, frame: int) -> None:
    rep = PianoRollRepresentation(
        n_tracks=1, track_mode="merge", steps_per_beat=steps_per_beat, pitch_low=60, pitch_high=72
    )
    model = MidiNet(rep, **SMALL).eval()
    w = 4 * steps_per_beat
    previous = torch.ones(2, 1, w, 13)
    assert model.conditioner(previous)[0].shape[-1] == frame
    fake = model.bar_logits(model.noise(2), previous, torch.zeros(2, 13))
    assert fake.shape == (2, 1, w, 13)
    assert model.discriminator(torch.sigmoid(fake), torch.zeros(2, 13))[1].shape[-1] == frame // 2
    assert model.generate(2, 3 * w).shape == (2, 3 * w, 1, 13)


# ------------------------------------------------------------------------------------ networks
def test_layer_shapes_are_the_reference_implementations() -> None:
    """128 pitches x 16 steps, as the reference code: every layer's output shape."""
    rep = PianoRollRepresentation(n_tracks=1, track_mode="merge", pitch_low=0, pitch_high=127)
    model = MidiNet(rep).eval()
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, module: torch.nn.Module, inputs: tuple, output: torch.Tensor | tuple) -> None:
        shapes[name] = tuple((output[0] if isinstance(output, tuple) else output).shape[1:])

    modules = dict(model.named_modules())
    for name in (
        *(f"conditioner.layers.{i}" for i in range(4)),
        "generators.0.fc1",
        "generators.0.fc2",
        *(f"generators.0.ups.{i}" for i in range(4)),
        "discriminator.conv1",
        "discriminator.conv2",
        "discriminator.fc1",
        "discriminator.fc2",
    ):
        modules[name].register_forward_hook(partial(record, name))
    z = model.noise(2)
    previous = torch.zeros(2, 1, 16, 128)
    condition = torch.from_numpy(parse_progression("C Am"))
    fake = model.bar_logits(z, previous, condition)
    model.discriminator(torch.sigmoid(fake), condition)
    assert z.shape == (2, 1, 100) and fake.shape == (2, 1, 16, 128)
    # The reference's (time x pitch x channels) maps are (channels, time) here: its layers either
    # span every pitch or one, so each is a 1-D convolution over time with the pitches as channels.
    expected = {
        # conditioner: 1 x 128 conv -> 16 x 1 x 16, then time halved three times
        "conditioner.layers.0": (16, 16),
        "conditioner.layers.1": (16, 8),
        "conditioner.layers.2": (16, 4),
        "conditioner.layers.3": (16, 2),
        # generator: z + chord -> 1024 -> 256 = 2 x 1 x 128, then 4, 8, 16 steps, then 16 x 128 x 1
        "generators.0.fc1": (1024,),
        "generators.0.fc2": (256,),
        "generators.0.ups.0": (128, 4),
        "generators.0.ups.1": (128, 8),
        "generators.0.ups.2": (128, 16),
        "generators.0.ups.3": (128, 16),  # 128 pitches x 16 steps
        # discriminator: f(x) = 8 x 1 x 14, then 3 x 1 x 77, 1024, 1
        "discriminator.conv1": (14, 8),
        "discriminator.conv2": (77, 3),
        "discriminator.fc1": (1024,),
        "discriminator.fc2": (1,),
    }
    for name, shape in expected.items():
        assert shapes[name] == shape, name
    generator = model.generators[0]
    # Every transposed convolution sees 128 channels + the 13-d chord + the conditioner's 16.
    assert [(up[0] if i < 3 else up).in_channels for i, up in enumerate(generator.ups)] == [128 + 13 + 16] * 4
    assert generator.fc1[0].in_features == 100 + 13 and generator.fc2[0].in_features == 1024 + 13
    # The discriminator sees the chord at every layer: beside the bar, f(x), and both dense layers.
    discriminator = model.discriminator
    assert discriminator.conv1[0].in_channels == 128 + 13 and discriminator.conv2[0].in_channels == 14 + 13
    assert discriminator.fc1[0].in_features == 77 * 3 + 13 and discriminator.fc2.in_features == 1024 + 13
    # "Creative" models: the previous bar joins only the last condition_layers transposed convolutions.
    creative = MidiNet(rep, condition_layers=1)
    assert len(creative.conditioner.layers) == 1
    assert [(up[0] if i < 3 else up).in_channels for i, up in enumerate(creative.generators[0].ups)] == [
        128 + 13
    ] * 3 + [128 + 13 + 16]
    assert MidiNet(rep, condition_layers=0).conditioner is None


def test_multitrack_generators_share_one_latent_and_keep_their_own() -> None:
    model = MidiNet(
        bach_representation(), tracks="all", noise_dim=6, private_noise_dim=4, chord_condition=False, **SMALL
    )
    assert len(model.generators) == 4 and model.conditioner.layers[0][0].in_channels == 4 * 49
    z = model.noise(3)
    assert z.shape == (3, 4, 10)
    assert torch.equal(z[:, 0, :6], z[:, 3, :6]) and not torch.equal(z[:, 0, 6:], z[:, 3, 6:])
    fake = model.eval().bar_logits(z, torch.zeros(3, 4, 16, 49), torch.zeros(3, 0))
    assert fake.shape == (3, 4, 16, 49)
    # A track's private latent reaches that track only.
    other = z.clone()
    other[:, 2, 6:] += 1.0
    changed = (
        (model.bar_logits(other, torch.zeros(3, 4, 16, 49), torch.zeros(3, 0)) != fake).flatten(2).any(-1)
    )
    assert changed.all(0).tolist() == [False, False, True, False]


@torch.no_grad()
def test_the_previous_bar_and_the_chord_condition_the_generator_for_the_same_noise() -> None:
    """What the generator makes of one noise vector changes with the previous bar and the chord
    (untrained, in eval mode: the network's wiring). Trained samples: the chord-following test."""
    rep = lead_sheet_representation()

    def bar(model: MidiNet, pitch: int, chord: str) -> torch.Tensor:
        previous = model.generated_tracks(roll_of([(0, pitch, 0, 16)], 16, rep)[None]).transpose(1, 2)
        condition = torch.from_numpy(parse_progression(chord)) if model.condition_dim else torch.zeros(1, 0)
        return torch.sigmoid(model.bar_logits(z, previous, condition))

    torch.manual_seed(0)
    model = MidiNet(rep, chord_track=1, **SMALL).eval()
    z = model.noise(1)
    base = bar(model, 60, "C")
    assert torch.equal(base, bar(model, 60, "C"))
    assert (base - bar(model, 72, "C")).abs().max() > 1e-5  # another previous bar
    assert (base - bar(model, 60, "F#m")).abs().max() > 1e-5  # another chord
    # Controls: what a model does not condition on cannot change its bars.
    blind = MidiNet(rep, chord_track=1, condition_layers=0, **SMALL).eval()
    assert torch.equal(bar(blind, 60, "C"), bar(blind, 72, "C"))
    assert (bar(blind, 60, "C") - bar(blind, 60, "F#m")).abs().max() > 1e-5
    chordless = MidiNet(rep, chord_condition=False, **SMALL).eval()
    assert chordless.condition_dim == 0 and chordless.generators[0].fc1[0].in_features == 100
    with pytest.raises(UserError, match="without chord conditioning"):
        chordless.generate(1, 32, chords="C G")


def test_binarize_keeps_the_most_probable_notes_a_track_allows() -> None:
    model = MidiNet(lead_sheet_representation(), tracks="all", chord_condition=False, **SMALL)
    probabilities = torch.zeros((1, 2, 16, 61))
    probabilities[0, :, :, [10, 20, 30]] = torch.tensor([0.6, 0.9, 0.7])  # a step expects 2.2 notes

    def per_step(on: torch.Tensor, track: int) -> list[list[int]]:
        return sorted({tuple(torch.nonzero(row).flatten().tolist()) for row in on[0, track]})

    # Before training nothing limits the notes of a step.
    assert per_step(model.binarize(probabilities, "expected"), 0) == [(20, 30)]
    assert per_step(model.binarize(probabilities, "threshold"), 1) == [(10, 20, 30)]
    model.voice_counts[0, 1] = 100  # the melody: one note per sounding step in the data
    model.voice_counts[1, 3] = 100  # the chords: three
    model.voice_counts[1, 2] = 1
    assert model.max_voices() == [1, 3]
    assert per_step(model.binarize(probabilities, "expected"), 0) == [(20,)]
    assert per_step(model.binarize(probabilities, "expected"), 1) == [(20, 30)]
    assert per_step(model.binarize(probabilities, "threshold"), 0) == [(20,)]
    assert per_step(model.binarize(probabilities, "threshold"), 1) == [(10, 20, 30)]
    assert per_step(model.binarize(probabilities, "threshold", threshold=0.65), 1) == [(20, 30)]
    certain = (probabilities > 0.5).float()
    assert torch.equal(model.binarize(certain, "bernoulli"), model.binarize(certain, "expected"))
    on = model.binarize(probabilities)  # the model's default: expected
    assert pairwise_distance(torch.stack([on[0, 0], on[0, 1]])) == 16  # 30 is on in one of them
    with pytest.raises(UserError, match="binarize='soft'"):
        model.binarize(probabilities, "soft")


def test_chord_progressions_are_drawn_from_the_training_datas_transitions() -> None:
    model = MidiNet(lead_sheet_representation(), chord_track=1, **SMALL)
    c, g = 0, 7
    model.chord_transitions[c, g] = 1000
    model.chord_transitions[g, c] = 1000
    torch.manual_seed(0)
    drawn = chord_index(model.progression(8, 6))
    assert set(drawn.flatten().tolist()) <= {c, g}
    assert (drawn[:, 1:] != drawn[:, :-1]).all()  # C and G alternate
    after = torch.from_numpy(np.stack([chord_vector((g, False))] * 8))
    assert (chord_index(model.progression(8, 1, after=after)) == c).all()
    given = model.progression(2, 5, "C Am")
    assert [chord_name(v) for v in given[1]] == ["C", "Am", "C", "Am", "C"]


# ------------------------------------------------------------------------------------ training
class RegisterMidiNet(MidiNet):
    """A prior vector of one's own: each bar's register (mean sounding pitch, 0..1 over the range)."""

    def bar_conditions(self, bars: torch.Tensor, batch) -> torch.Tensor:
        pitches = torch.arange(self.n_pitches, dtype=torch.float32) / (self.n_pitches - 1)
        sounding = bars.float().sum((-3, -2))  # (B, n_bars, pitches)
        return ((sounding * pitches).sum(-1) / sounding.sum(-1).clamp(min=1))[..., None]


def test_any_prior_vector_conditions_through_a_subclass_or_the_batch(tmp_path: Path, bach_datamodule) -> None:
    """The 1-D condition need not be a chord: a subclass's `bar_conditions`, or a batch that carries
    ``"condition"``, trains the model on its own vectors, and sampling takes them as an array."""
    fit = partial(
        L.Trainer, max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    torch.manual_seed(0)
    model = RegisterMidiNet(bach_datamodule.representation, condition_dim=1, **SMALL)
    assert not model.conditions_are_chords
    fit().fit(model, datamodule=bach_datamodule)
    assert model.voice_counts.sum() > 0 and model.chord_transitions.sum() == 0  # not chords: not counted
    batch = next(iter(bach_datamodule.train_dataloader()))
    _, current, condition = model.pairs(batch)
    assert condition.shape == (len(current), 1) and 0 < condition.mean() < 1
    model.eval()

    z, previous = model.noise(1), current[:1]
    with torch.no_grad():
        low, high = (torch.sigmoid(model.bar_logits(z, previous, torch.tensor([[r]]))) for r in (0.2, 0.8))
    assert (low - high).abs().max() > 1e-5  # the vector reaches the generator
    out = model.generate(2, 64, chords=np.array([[0.2], [0.8]], dtype=np.float32))
    assert out.shape == (2, 64, *out.shape[2:]) and out[:, :, model.channels].any()
    with pytest.raises(UserError, match="1-d prior vector: give it as chords=<array>"):
        model.generate(1, 32)
    with pytest.raises(UserError, match="conditions of size 13, the model takes 1"):
        model.generate(1, 32, chords="C G")

    # A datamodule's own vectors: batches with "condition" (here 3-d, per bar of 2-bar windows).
    rep = lead_sheet_representation()
    rng = np.random.default_rng(0)
    items = [
        {
            "x": torch.from_numpy(rng.random((32, 2, rep.n_pitches)) > 0.95),
            "mask": torch.ones(32, dtype=torch.bool),
            "condition": torch.from_numpy(rng.random((2, 3)).astype(np.float32)),
        }
        for _ in range(16)
    ]
    loader = torch.utils.data.DataLoader(items, batch_size=8)
    given = MidiNet(rep, condition_dim=3, **SMALL)
    fit(limit_val_batches=0).fit(given, train_dataloaders=loader)
    _, _, condition = given.pairs(next(iter(loader)))
    assert torch.equal(condition, torch.stack([item["condition"][1] for item in items[:8]]))
    # A size that neither chords nor the batch give fails on the first batch, naming both.
    with pytest.raises(UserError, match=r"model\.condition_dim=5 is not the 13 of a chord"):
        MidiNet(rep, condition_dim=5, **SMALL).pairs(
            {k: v for k, v in next(iter(loader)).items() if k != "condition"}
        )
    with pytest.raises(UserError, match=r"the batch's 'condition' does not match model\.condition_dim"):
        MidiNet(rep, condition_dim=5, **SMALL).pairs(next(iter(loader)))


def test_one_training_step_updates_both_networks_each_with_its_own_optimiser(
    tmp_path: Path, bach_datamodule
) -> None:
    cfg = compose_train(
        ["model=midinet", "logger=none", "callbacks=none", *SMALL_OVERRIDES], output_dir=tmp_path
    )
    model = instantiate_checked(cfg.model, representation=bach_datamodule.representation)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = hydra.utils.instantiate(
        cfg.trainer, max_epochs=1, limit_train_batches=1, limit_val_batches=1, enable_progress_bar=False
    )
    trainer.fit(model, datamodule=bach_datamodule)
    generator, discriminator = trainer.optimizers
    assert isinstance(generator, torch.optim.Adam) and generator.defaults["betas"][0] == 0.5
    assert generator.defaults["lr"] == discriminator.defaults["lr"] == 2e-4
    owned = lambda opt: {id(p) for group in opt.param_groups for p in group["params"]}  # noqa: E731
    assert owned(generator) == {id(p) for p in model.optimizer_parameters("generator")}
    assert owned(discriminator) == {id(p) for p in model.discriminator.parameters()}
    assert not owned(generator) & owned(discriminator)
    assert generator.state and discriminator.state  # each stepped
    assert all(
        generator.state[p]["step"] == 2 for p in model.optimizer_parameters("generator")
    )  # two G steps
    assert all(discriminator.state[p]["step"] == 1 for p in model.discriminator.parameters())
    for name, p in model.named_parameters():
        assert not torch.equal(before[name], p.detach()), f"{name} was not updated"
    metrics = trainer.callback_metrics
    for name in ("d_loss", "g_loss", "d_real", "d_fake", "feature_matching"):
        assert torch.isfinite(metrics[f"train/{name}"]), name
    assert 0 < metrics["train/d_real"] < 1 and 0 < metrics["train/d_fake"] < 1
    assert {"val/loss", "val/diversity", "val/diversity_real"} <= set(metrics)
    assert metrics["val/diversity_real"] > 0
    assert model.voice_counts.sum() > 0 and model.chord_transitions.sum() > 0


def midinet_overrides(tmp_path: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [
        f"paths.cache_dir={cache_dir}",
        "data.source.limit=16",
        "data.batch_size=8",
        "n_samples=2",
        "sample_length=64",
        "callbacks.progress_bar=null",
        "callbacks.sample_music.n_samples=2",
        "callbacks.sample_music.n_audio=0",
        "torch_threads=1",
        *SMALL_OVERRIDES,
        *extra,
    ]


@pytest.mark.parametrize(
    ("model", "tracks"),
    [("midinet", ["soprano", "chords"]), ("midinet_multitrack", ["soprano", "alto", "tenor", "bass"])],
)
def test_fast_dev_run_through_muselab_train(
    model: str, tracks: list[str], tmp_path: Path, cache_dir: Path
) -> None:
    cfg = compose_train(
        midinet_overrides(tmp_path, cache_dir, f"model={model}", "trainer.fast_dev_run=true", "logger=none"),
        output_dir=tmp_path,
    )
    out = train(cfg)
    assert math.isfinite(out["metrics"]["train/d_loss"]) and math.isfinite(out["metrics"]["val/loss"])
    assert len(out["samples"]) == 2
    for path in out["samples"]:
        music = muspy.read_midi(path)
        assert [t.name for t in music.tracks] == tracks
        assert 0 < music.get_end_time() <= 64 * music.resolution // 4  # sample_length=64 steps


@pytest.mark.parametrize("tracks", ["melody", "all"])
def test_samples_decode_to_midi_with_the_bars_and_tracks_asked_for(tracks: str, tmp_path: Path) -> None:
    rep = bach_representation()
    model = MidiNet(rep, tracks=tracks, chord_condition=tracks == "melody", **SMALL)
    musics = model.sample(3, length=5 * 16 + 8)  # five and a half bars: six bars, the last one cut
    names = ["soprano", "chords"] if tracks == "melody" else ["soprano", "alto", "tenor", "bass"]
    for i, music in enumerate(musics):
        assert [t.name for t in music.tracks] == names
        assert n_bars(music) == 6 and music.get_end_time() == 88
        path = write_midi([music], tmp_path / str(i))[0]
        back = muspy.read_midi(path).adjust_resolution(rep.steps_per_beat)
        assert [t.name for t in back.tracks] == names
        for written, read in zip(music.tracks, back.tracks):
            assert [(n.time, n.pitch, n.duration) for n in written.notes] == [
                (n.time, n.pitch, n.duration) for n in read.notes
            ]
    if tracks == "melody":  # one block chord per bar, the last one cut with the piece
        assert {n.time for n in musics[0].tracks[-1].notes} == set(range(0, 88, 16))
        assert max(n.time + n.duration for n in musics[0].tracks[-1].notes) == 88


def test_a_trained_checkpoint_samples_bar_by_bar_from_a_primer_over_a_progression(
    tmp_path: Path, cache_dir: Path
) -> None:
    from muselab.sample import main

    cfg = compose_train(
        midinet_overrides(
            tmp_path, cache_dir, "model=midinet", "logger=none", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1", "test=false", "n_samples=0",
        ),
        output_dir=tmp_path,
    )  # fmt: skip
    ckpt = train(cfg)["last_ckpt"]
    model = load_model(ckpt)
    assert model.voice_counts.sum() > 0 and model.max_voices() == [1]  # a soprano sings one note
    # A melody primer (Magenta events) of one bar; the chain continues for 5 more bars.
    main([f"ckpt={ckpt}", "n=2", f"out={tmp_path / 's'}", "prompt=60,-2,-2,-2,62,-2,-2,-2,64,-2,-2,-2,65,-2,-2,-2",
          "length=96", "chords=C G Am F", "render=false"])  # fmt: skip
    for path in sorted((tmp_path / "s").glob("*.mid")):
        music = muspy.read_midi(path).adjust_resolution(4)
        melody, chords = music.tracks
        assert [(n.time, n.pitch) for n in melody.notes[:4]] == [(0, 60), (4, 62), (8, 64), (12, 65)]
        # The progression, one chord per generated bar from bar 1, cycled: C G Am F C.
        by_bar = {}
        for note in chords.notes:
            by_bar.setdefault(note.time // 16, set()).add(note.pitch % 12)
        assert by_bar == {1: {0, 4, 7}, 2: {7, 11, 2}, 3: {9, 0, 4}, 4: {5, 9, 0}, 5: {0, 4, 7}}
        steps = np.zeros(96, dtype=int)
        for note in melody.notes:
            steps[note.time : note.time + note.duration] += 1
        assert steps.max() <= 1  # monophonic, as the soprano it learnt from
    with pytest.raises(UserError, match="'Q' is not a chord symbol"):
        model.sample(1, chords="C Q")


# ------------------------------------------------------------------------------------ following chords
PROGRESSION_CHORDS = ["C", "F", "G", "Am", "Dm", "Em"]


def write_lead_sheets(root: Path, n_pieces: int = 48, bars: int = 8, seed: int = 0) -> Path:
    """Real MIDI lead sheets: random diatonic progressions as block chords, and a melody of quarter
    notes drawn from the tones of each bar's chord."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_pieces):
        music = muspy.Music(resolution=4, tempos=[muspy.Tempo(0, 120.0)])
        melody, chords = [], []
        for bar in range(bars):
            root_pc, minor = parse_chord(str(rng.choice(PROGRESSION_CHORDS)))
            tones = [root_pc, root_pc + (3 if minor else 4), root_pc + 7]
            chords += [muspy.Note(bar * 16, 48 + t, 16, 60) for t in tones]
            for beat in range(4):
                pitch = 60 + int(rng.choice(tones)) % 12
                melody.append(muspy.Note(bar * 16 + beat * 4, pitch, 4, 80))
        music.tracks = [
            muspy.Track(0, name="melody", notes=melody),
            muspy.Track(0, name="chords", notes=chords),
        ]
        muspy.write_midi(root / f"sheet{i:02d}.mid", music)
    return root


@pytest.mark.slow
def test_samples_follow_a_given_chord_progression_better_than_chance(tmp_path: Path) -> None:
    """A model trained on lead sheets whose melodies keep to the chord tones plays the chords it is
    given, and its samples for one noise change with the chords and the previous bar."""
    rep = PianoRollRepresentation(n_tracks=2, track_mode="index", pitch_low=48, pitch_high=84)
    datamodule = MusicDataModule(
        FolderSource(str(write_lead_sheets(tmp_path / "sheets"))), rep, cache_dir=str(tmp_path / "cache"),
        window=32, stride=16, batch_size=32, val_fraction=0.1, test_fraction=0.0, transpose=0, n_jobs=1,
    )  # fmt: skip
    adam = partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999))
    L.seed_everything(0)
    model = MidiNet(
        rep, chord_track=1, generator_hidden=256, generator_channels=64, discriminator_hidden=256,
        optimizer={"generator": adam, "discriminator": adam},
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)

    def sample(chords: str, primer_pitch: int | None = None) -> list[muspy.Music]:
        torch.manual_seed(1)
        primer = None if primer_pitch is None else roll_of([(0, primer_pitch, 0, 16)], 16, rep).numpy()
        return model.sample(16, 128 if primer is None else 144, prompt=primer, chords=chords)

    progression = parse_progression("C G Am F")
    unrelated = parse_progression("F#m Bb Eb C#")  # triads that share few tones with C G Am F
    ratios, chance = [], []
    for music in sample("C G Am F"):
        melody = rep.encode(music)[:, 0]
        ratios.append(chord_tone_ratio(melody, np.tile(progression, (2, 1)), rep.pitch_low, 16))
        chance.append(chord_tone_ratio(melody, np.tile(unrelated, (2, 1)), rep.pitch_low, 16))
    assert sum(r is not None for r in ratios) >= 12  # the samples have notes
    ratio = float(np.mean([r for r in ratios if r is not None]))
    # Chance: random pitch classes hit a triad 3 times in 12, a diatonic melody that ignores the
    # chords about 3 in 7; the training melodies hit it every time.
    assert ratio > 0.5, ratio
    assert ratio > float(np.mean([r for r in chance if r is not None])) + 0.3

    # Conditioning really conditions: one noise, other chords or another previous bar, other notes.
    def rolls(musics: list[muspy.Music]) -> np.ndarray:
        out = np.zeros((len(musics), 144, rep.n_tracks, rep.n_pitches), dtype=bool)
        for i, music in enumerate(musics):
            roll = rep.encode(music)
            out[i, : len(roll)] = roll
        return out

    assert not np.array_equal(rolls(sample("C G Am F")), rolls(sample("F C Dm G")))
    assert np.array_equal(rolls(sample("C G Am F", 60)), rolls(sample("C G Am F", 60)))
    assert not np.array_equal(rolls(sample("C G Am F", 60)), rolls(sample("C G Am F", 67)))


# ------------------------------------------------------------------------------------ benchmark
def test_benchmark_measures_samples_beside_real_windows_and_keeps_other_runs(
    tmp_path: Path, bach_datamodule
) -> None:
    from muselab.bench import midinet as bench

    bach_datamodule.setup()
    model = MidiNet(bach_datamodule.representation, **SMALL)
    model.voice_counts[0, 1] = 1  # as if trained on one-voice bars
    row = bench.measure(model, bach_datamodule, n=4, bars=2, seed=0)
    assert row["n"] == 4
    data, samples = row["data"], row["samples"]
    assert data["empty_bar_rate"] < 0.5 and data["long_note_rate"] > 0.8  # chorale sopranos
    assert 0 <= samples["chord_tone_ratio"] <= 1 and data["diversity"] > 0
    assert data["tonal_distance"] > 0  # the soprano against its bar chords, played as a track
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    first = {"run": "multitrack-bach", "params": 1, "epochs": 2, "batches": 3, "minutes": 1.0, "wall_s": 60.0,
             "threads": 1, "load": 1.0, "overrides": [], "date": "2026-01-01", "run_dir": "x", "commit": "abc",
             **row}  # fmt: skip
    meta = {"command": "make bench-midinet", "hardware": "cpu", "date": "2026-01-01", "notes": "A note.\n"}
    bench.replace_section(docs, bench.SECTION, bench.render_section([first], meta))
    rows, notes = bench.previous_rows(docs)
    assert rows == [first] and notes.strip() == "A note."
    text = docs.read_text()
    assert "## Other\n\nkept" in text and "### multitrack-bach (2026-01-01)" in text
    assert "| chord-tone ratio (melody notes on the bar's triad) |" in text
    assert f"({data['tonal_distance_p10']:.2f}–" in text
