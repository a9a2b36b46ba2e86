"""MusicVAE (`lightning_modules/musicvae.py`) and the trio representation (`datamodules/trio.py`).

Shapes through the encoder and both decoders for melodies, trios and piano-rolls; the hierarchical
decoder's segments independent of each other; KL, free bits, β and scheduled sampling against hand
computations; interpolation ends; attribute vectors; trio MIDI written and read back; and real
training runs of every MusicVAE config, the interpolate CLI and attribute sampling on checkpoints.
"""

from __future__ import annotations

import math
from pathlib import Path

import muspy
import numpy as np
import pytest
import torch

from datamodules.notes import NoteTable, TrackNotes
from datamodules.representations import MelodyRepresentation, PianoRollRepresentation
from datamodules.sources import UnusableItem
from datamodules.trio import DRUM_VOCAB, TrioRepresentation, drum_classes
from lightning_modules.base import load_model
from lightning_modules.musicvae import (
    ATTRIBUTES,
    LatentStatistics,
    MusicVAE,
    attribute_vectors,
    beta_at,
    free_bits_kl,
    interpolate_latents,
    kl_per_dimension,
    music_attributes,
    parse_attribute_shifts,
    sampling_probability,
    slerp,
)
from muselab.errors import UserError
from muselab.interpolate import interpolate
from muselab.interpolate import main as interpolate_main
from muselab.sample import sample
from muselab.train import train
from tests.helpers import compose_train

TINY = {"z_size": 8, "encoder_size": 16, "decoder_size": 16, "conductor_size": 12}
TINY_OVERRIDES = [f"model.{k}={v}" for k, v in TINY.items()]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def representations() -> dict[str, object]:
    return {
        "melody": MelodyRepresentation(48, 71),
        "trio": TrioRepresentation(36, 83),
        "pianoroll": PianoRollRepresentation(n_tracks=2, track_mode="index", pitch_low=60, pitch_high=71),
    }


def random_batch(kind: str, model: MusicVAE, n: int = 3, steps: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "melody":
        return torch.randint(0, model.parts[0].size, (n, steps), generator=g)
    if kind == "trio":
        return torch.stack([torch.randint(0, p.size, (n, steps), generator=g) for p in model.parts], dim=-1)
    return (torch.rand(n, steps, 2, 12, generator=g) < 0.2).float()


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("decoder", ["flat", "hierarchical"])
@pytest.mark.parametrize("kind", ["melody", "trio", "pianoroll"])
def test_shapes_through_the_encoder_and_both_decoders(kind: str, decoder: str) -> None:
    model = MusicVAE(representations()[kind], steps=32, decoder=decoder, segment_steps=8, **TINY)
    x = random_batch(kind, model)
    parts = [x] if kind == "melody" else list(x.unbind(2))
    mu, sigma = model._encode_parts(parts, torch.ones(3, 32, dtype=torch.bool))
    assert mu.shape == sigma.shape == (3, 8) and bool((sigma > 0).all())
    logits = model.decoder.teacher_forced(mu, parts)
    assert [tuple(lg.shape) for lg in logits] == [(3, 32, p.size) for p in model.parts]
    if kind == "trio":
        assert [p.size for p in model.parts] == [50, 50, DRUM_VOCAB]
    _, chosen = model.decoder.run(mu, 32, lambda part, lg: part.choose(lg, 1.0))
    assert [tuple(c.shape) for c in chosen] == [tuple(p.shape) for p in parts]
    arrays = model.decode_arrays(torch.randn(2, 8), temperature=1.0)
    assert tuple(arrays.shape) == (2, 32, *x.shape[2:])
    musics = model.sample(2)
    assert len(musics) == 2 and len(musics[0].tracks) == len(model.parts)


def test_hierarchical_segments_do_not_depend_on_the_segment_before() -> None:
    """Segment k's logits stay the same when segment k-1 (the notes its bottom decoder read, hence
    its whole bottom-level state) changes, given the same z and so the same conductor embedding;
    within a segment, and in the flat decoder, the steps before do matter."""
    rep = MelodyRepresentation(48, 71)
    model = MusicVAE(rep, steps=32, decoder="hierarchical", segment_steps=8, **TINY)
    flat = MusicVAE(rep, steps=32, decoder="flat", **TINY)
    torch.manual_seed(0)
    for module in (model, flat):  # weights far from their tiny initial values, so z and tokens matter
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.3)
    x = random_batch("melody", model, n=2)
    perturbed = x.clone()
    perturbed[:, 8:16] = (perturbed[:, 8:16] + 7) % model.parts[0].size  # all of segment 1
    z = torch.randn(2, 8)
    (before,) = model.decoder.teacher_forced(z, [x])
    (after,) = model.decoder.teacher_forced(z, [perturbed])
    assert torch.equal(before[:, 16:], after[:, 16:])  # segments 2 and 3: untouched
    assert torch.equal(before[:, :9], after[:, :9])  # up to segment 1's first step (reads step 8 - 1)
    assert not torch.allclose(before[:, 9:16], after[:, 9:16])  # inside segment 1 the notes matter
    (flat_before,) = flat.decoder.teacher_forced(z, [x])
    (flat_after,) = flat.decoder.teacher_forced(z, [perturbed])
    assert not torch.allclose(flat_before[:, 16:], flat_after[:, 16:])
    # Free-running, every segment starts from the same state: its embedding alone.
    e = model.decoder.embeddings(z, 4)
    state = model.decoder.bottom[0].initial(e)
    assert torch.equal(state[0], model.decoder.bottom[0].initial(e.clone())[0])


# ------------------------------------------------------------------------------------------ loss
def test_kl_free_bits_beta_and_sampling_schedule_against_hand_values() -> None:
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    sigma = torch.tensor([[1.0, 0.5], [1.0, 1.0]])
    kl = kl_per_dimension(mu, sigma)
    # ½(μ² + σ² - 1) - ln σ
    assert torch.allclose(kl, torch.tensor([[0.5, 0.5 * (0.25 - 1) + math.log(2)], [0.0, 0.0]]))
    total = kl.sum(-1)
    assert torch.allclose(free_bits_kl(total, 1.0), torch.tensor([0.125, 0.0]))  # 0.125 + ln 2 - 1 bit
    assert torch.allclose(free_bits_kl(total, 2.0), torch.zeros(2))
    assert torch.allclose(free_bits_kl(total, 0.0), total)
    assert beta_at(0, 0.99999, 0.2) == 0.0
    assert beta_at(1, 0.99999, 0.2) == pytest.approx(0.2 * 1e-5)
    assert beta_at(100_000, 0.99999, 0.2) == pytest.approx(0.2 * (1 - math.exp(-1)), rel=1e-4)
    assert beta_at(1, 0.0, 0.2) == beta_at(50, 0.0, 0.2) == 0.2
    assert sampling_probability(5, "none", 1000) == 0.0
    assert sampling_probability(0, "inverse_sigmoid", 1000) == pytest.approx(1 - 1000 / 1001)
    assert sampling_probability(round(1000 * math.log(1000)), "inverse_sigmoid", 1000) == pytest.approx(
        0.5, abs=1e-3
    )
    assert sampling_probability(10**9, "inverse_sigmoid", 1000) == 1.0
    with pytest.raises(ValueError, match="sampling_schedule"):
        sampling_probability(0, "linear", 1.0)


def test_the_loss_is_reconstruction_plus_beta_times_the_clipped_kl(monkeypatch: pytest.MonkeyPatch) -> None:
    model = MusicVAE(MelodyRepresentation(48, 71), steps=16, free_bits=4.0, **TINY)
    model.encoder.mu.bias.data.fill_(1.0)  # KL per piece near 8 x (½(1 + 0.69² - 1) - ln 0.69) = 4.85 nats
    monkeypatch.setattr(model, "beta", lambda: 0.3)
    x = random_batch("melody", model, n=4, steps=16)
    torch.manual_seed(1)
    figures = model._forward({"x": x}, train=False)["figures"]
    torch.manual_seed(1)
    mu, sigma = model._encode_parts([x], torch.ones(4, 16, dtype=torch.bool))
    z = mu + sigma * torch.randn_like(mu)
    (logits,) = model.decoder.teacher_forced(z, [x])
    recon = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x, reduction="none").sum(1)
    kl = (0.5 * (mu**2 + sigma**2 - 1) - torch.log(sigma)).sum(-1)
    clipped = (kl - 4.0 * math.log(2)).clamp_min(0)  # free bits: 4 bits = 2.77 nats
    assert bool((clipped > 0).all()) and bool((clipped < kl).all())
    assert torch.allclose(figures["recon"], recon.mean(), atol=1e-4)
    assert torch.allclose(figures["kl"], kl.mean()) and float(figures["beta"]) == pytest.approx(0.3)
    assert torch.allclose(figures["loss"], recon.mean() + 0.3 * clipped.mean(), atol=1e-4)


@pytest.mark.parametrize("decoder", ["flat", "hierarchical"])
def test_scheduled_sampling_feeds_the_truth_or_the_models_own_steps(decoder: str) -> None:
    """With probability 0 the step-by-step decoder reads the truth (= teacher forcing); with 1 it reads
    its own samples (= free running); the training loss takes that path when the schedule is on."""
    model = MusicVAE(MelodyRepresentation(48, 71), steps=16, decoder=decoder, segment_steps=8, **TINY)
    x = random_batch("melody", model, n=3, steps=16)
    z = torch.randn(3, 8)
    sample = lambda part, logits: part.choose(logits, 1.0)  # noqa: E731
    (forced,) = model.decoder.teacher_forced(z, [x])
    (truth_fed,), _ = model.decoder.run(z, 16, sample, [x], sample_probability=0.0)
    assert torch.allclose(truth_fed, forced, atol=1e-5)
    greedy = lambda part, logits: part.choose(logits, 0.0)  # noqa: E731
    (own_fed,), _ = model.decoder.run(z, 16, greedy, [x], sample_probability=1.0)
    (free,), _ = model.decoder.run(z, 16, greedy)
    assert torch.allclose(own_fed, free, atol=1e-6) and not torch.allclose(own_fed, forced, atol=1e-3)
    scheduled = MusicVAE(
        MelodyRepresentation(48, 71), steps=16, sampling_schedule="constant", sampling_rate=1.0, **TINY
    )
    figures = scheduled._forward({"x": x}, train=True)["figures"]
    assert float(figures["sampling_probability"]) == 1.0 and torch.isfinite(figures["loss"])


# ------------------------------------------------------------------------------------------ latent space
def test_slerp_and_lerp_paths() -> None:
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    path = interpolate_latents(a, b, 5, "slerp")
    assert torch.allclose(path[0], a) and torch.allclose(path[-1], b, atol=1e-6)
    unit = interpolate_latents(a, b / 2, 5, "slerp")  # codes of one norm: even steps along the arc
    assert torch.allclose(unit.norm(dim=1), torch.ones(5))
    assert torch.allclose(torch.atan2(unit[:, 1], unit[:, 0]), torch.linspace(0, math.pi / 2, 5), atol=1e-6)
    assert torch.allclose(interpolate_latents(a, b, 3, "lerp")[1], torch.tensor([0.5, 1.0]))
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel codes: linear
    with pytest.raises(UserError, match="mode"):
        interpolate_latents(a, b, 3, "cubic")
    with pytest.raises(UserError, match="steps=1"):
        interpolate_latents(a, b, 1)


def test_interpolation_ends_decode_to_the_reconstructions_of_a_and_b() -> None:
    torch.manual_seed(0)
    model = MusicVAE(MelodyRepresentation(48, 71), steps=32, decoder="hierarchical", **TINY)
    x = random_batch("melody", model, n=1, seed=1)
    x = torch.cat([x, (x + 5) % model.parts[0].size])  # two pieces that differ from the first step
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(80):  # learn them: z must tell the decoder which piece starts
        optimizer.zero_grad()
        model._forward({"x": x}, train=True)["figures"]["loss"].backward()
        optimizer.step()
    model.eval()
    rep = model.representation
    a, b = (rep.decode(row.numpy()) for row in x)
    z = model.encode([a, b])
    path = model.decode(interpolate_latents(z[0], z[1], 6, "slerp"))
    ends = model.decode(z)
    encoded = [rep.encode(m) for m in (*ends, path[0], path[-1])]
    assert np.array_equal(encoded[2], encoded[0]) and np.array_equal(encoded[3], encoded[1])
    assert not np.array_equal(encoded[0], encoded[1])


def test_attributes_of_a_hand_made_melody_and_attribute_vectors() -> None:
    rep = MelodyRepresentation(48, 84)
    # C4 D4 E4 (16ths on steps 0, 1, 3) then F#4 held: 4 notes over one bar
    events = np.zeros(16, dtype=np.int64)
    for step, pitch in ((0, 60), (1, 62), (3, 64), (6, 66)):
        events[step] = 2 + pitch - 48
    values = music_attributes(rep.decode(events))
    assert values["note_density"] == pytest.approx(4.0)
    assert values["pitch_range"] == 6.0 and values["mean_pitch"] == pytest.approx(63.0)
    assert values["average_interval"] == pytest.approx(2.0)
    assert values["c_diatonic"] == pytest.approx(0.75)
    assert values["syncopation_16th"] == pytest.approx(0.5)  # steps 1 and 3
    assert values["syncopation_8th"] == pytest.approx(0.25)  # step 6
    assert values["polyphony"] == 1.0
    silent = music_attributes(rep.decode(np.zeros(16, dtype=np.int64)))
    assert silent["note_density"] == 0.0 and math.isnan(silent["pitch_range"])
    # μ's first dimension follows attribute 0 (0..39: quartiles ≤ 9.75 and ≥ 29.25, means 4.5 and
    # 34.5); attribute 1 is the same for everyone; attribute 2 is 0 but for pieces 15..19
    g = torch.Generator().manual_seed(0)
    skewed = torch.zeros(40)
    skewed[15:20] = 1.0
    values_t = torch.stack([torch.arange(40.0), torch.full((40,), 3.0), skewed], dim=1)
    mu = torch.randn(40, 4, generator=g) * 0.01
    mu[:, 0] += values_t[:, 0] / 10
    mu[:, 1] += skewed
    vectors, defined = attribute_vectors(mu, values_t)
    assert defined.tolist() == [True, False, True]
    assert vectors[0, 0] == pytest.approx(3.0, abs=0.02) and vectors[0, 1:].abs().max() < 0.02
    assert vectors[2, 1] == pytest.approx(1.0, abs=0.02)  # the 5 above the shared lowest value
    assert parse_attribute_shifts("note_density:+1.0, pitch_range:-0.5") == [
        ("note_density", 1.0),
        ("pitch_range", -0.5),
    ]
    with pytest.raises(UserError, match="name:amount"):
        parse_attribute_shifts("note_density=1")


def test_latent_statistics_counts_active_units() -> None:
    stats = LatentStatistics(z_size=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        mu = torch.randn(16, 3, generator=g) * torch.tensor([1.0, 0.05, 0.3])
        stats.update(mu, torch.ones(16, 3) * torch.tensor([1.0, 0.0, 2.0]))
    out = stats.compute()
    assert out["active_units"] == 2  # variance 1 and 0.09 pass 0.01; 0.0025 does not
    assert torch.allclose(out["kl_per_dimension"], torch.tensor([1.0, 0.0, 2.0]))
    assert "attribute_vectors" not in out  # no attributes given


def test_a_model_needs_a_representation_it_can_read() -> None:
    from lightning_modules.base import IncompatibleRepresentation

    with pytest.raises(ValueError, match="multiple of"):
        MusicVAE(MelodyRepresentation(), steps=40, decoder="hierarchical", **TINY)
    with pytest.raises(ValueError, match="flat or hierarchical"):
        MusicVAE(MelodyRepresentation(), decoder="deep", **TINY)

    class Audio(MelodyRepresentation):
        def describe(self):
            from dataclasses import replace

            return replace(super().describe(), kind="audio")

    with pytest.raises(IncompatibleRepresentation, match="needs a melody, trio or piano-roll representation"):
        MusicVAE(Audio(), **TINY)


# ------------------------------------------------------------------------------------------ trio
def trio_music(seed: int, bars: int = 2, resolution: int = 24) -> muspy.Music:
    """Random melody (program 73), bass (program 33, with a low octave doubling) and drums."""
    rng = np.random.default_rng(seed)
    step = resolution // 4
    music = muspy.Music(resolution=resolution, tempos=[muspy.Tempo(0, 120.0)])
    melody = [
        muspy.Note(int(s) * step, int(rng.integers(60, 80)), 2 * step, 90) for s in range(0, 16 * bars, 2)
    ]
    bass = []
    for s in range(0, 16 * bars, 4):
        pitch = int(rng.integers(40, 52))
        bass += [muspy.Note(s * step, pitch, 4 * step, 90), muspy.Note(s * step, pitch + 12, 4 * step, 90)]
    drums = [muspy.Note(s * step, 36, step, 90) for s in range(0, 16 * bars, 4)]
    drums += [muspy.Note(s * step, int(rng.choice([42, 44, 38])), step, 90) for s in range(2, 16 * bars, 4)]
    drums += [muspy.Note(0, 99, step, 90)]  # not one of the 9 classes: dropped
    music.tracks += [
        muspy.Track(program=73, name="flute", notes=melody),
        muspy.Track(program=33, name="bass", notes=bass),
        muspy.Track(program=0, is_drum=True, name="drums", notes=drums),
    ]
    return music


def write_trio_folder(root: Path, n: int = 10, bars: int = 16) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        muspy.write_midi(root / f"trio_{i:02d}.mid", trio_music(i, bars))
    only_melody = trio_music(99, bars)
    only_melody.tracks = only_melody.tracks[:1]
    muspy.write_midi(root / "no_bass_no_drums.mid", only_melody)
    return root


def test_trio_round_trip_through_a_midi_file(tmp_path: Path) -> None:
    rep = TrioRepresentation(21, 108)
    music = trio_music(0)
    path = tmp_path / "trio.mid"
    muspy.write_midi(path, music)
    encoded = rep.encode(NoteTable.read_midi(path))
    assert encoded.shape == (32, 3)
    decoded = rep.decode(encoded)
    assert [(t.name, t.program, t.is_drum) for t in decoded.tracks] == [
        ("melody", 0, False),
        ("bass", 33, False),
        ("drums", 0, True),
    ]
    assert [(n.time, n.pitch) for n in decoded.tracks[0].notes] == [
        (n.time // 6, n.pitch) for n in music.tracks[0].notes
    ]
    lows = [n for n in music.tracks[1].notes if n.pitch < 52]
    assert [(n.time, n.pitch) for n in decoded.tracks[1].notes] == [(n.time // 6, n.pitch) for n in lows]
    # kick on every beat; closed hi-hat (42, 44 -> 42) or snare (38) between; pitch 99 dropped
    drums = {(n.time, n.pitch) for n in decoded.tracks[2].notes}
    assert {(s, 36) for s in range(0, 32, 4)} <= drums
    assert {p for _, p in drums} <= {36, 38, 42}
    assert rep.encode(decoded).tolist() == encoded.tolist()
    moved = rep.transpose(encoded, 3)
    assert np.array_equal(moved[:, 2], encoded[:, 2])  # drums never move
    assert rep.pitch_extent(moved) == tuple(e + 3 for e in rep.pitch_extent(encoded))


def test_trio_drum_classes_and_missing_parts() -> None:
    assert drum_classes(np.array([35, 36, 38, 42, 46, 45, 48, 50, 49, 51, 99])).tolist() == [
        0, 0, 1, 2, 3, 4, 5, 6, 7, 8, -1,
    ]  # fmt: skip
    rep = TrioRepresentation()
    melody_only = NoteTable(24, [TrackNotes(np.array([[0, 24, 60, 80]]), program=0)])
    with pytest.raises(UnusableItem, match="trio: no bass and no drums track"):
        rep.encode(melody_only)
    loose = TrioRepresentation(require_all=False).encode(melody_only)
    assert loose.shape == (4, 3) and loose[:, 1:].sum() == 0


# ------------------------------------------------------------------------------------------ training runs
def run_config(tmp_path: Path, cache_dir: Path, *overrides: str) -> dict:
    cfg = compose_train(
        [
            f"paths.cache_dir={cache_dir}",
            "logger=none",
            "callbacks.progress_bar=null",
            "torch_threads=1",
            "n_samples=1",
            *TINY_OVERRIDES,
            *overrides,
        ],
        output_dir=tmp_path,
    )
    return train(cfg)


@pytest.mark.parametrize(
    "config",
    [
        ["model=musicvae", "data.source.limit=24"],
        ["model=musicvae_mel16", "data.source.limit=24", "data.batch_size=4"],
        ["model=musicvae_mel16", "model.decoder=flat", "data.source.limit=24", "data.batch_size=4"],
        ["model=musicvae_multitrack", "data.source.limit=12", "data.batch_size=8"],
    ],
    ids=["musicvae", "mel16", "mel16-flat", "multitrack"],
)
def test_fast_dev_run_of_every_config(config: list[str], tmp_path: Path, cache_dir: Path) -> None:
    out = run_config(tmp_path, cache_dir, *config, "trainer.fast_dev_run=true")
    metrics = out["metrics"]
    for name in (
        "train/loss",
        "train/recon",
        "train/kl",
        "train/beta",
        "val/accuracy",
        "val/sampled_accuracy",
    ):
        assert math.isfinite(metrics[name]), name
    assert 0.0 <= metrics["val/sampled_accuracy"] <= 1.0


def test_trio_trains_on_a_midi_folder_with_drums(tmp_path: Path, cache_dir: Path) -> None:
    root = write_trio_folder(tmp_path / "midi")
    out = run_config(
        tmp_path / "run",
        cache_dir,
        "model=musicvae_trio",
        f"data.source.root={root}",
        "data.batch_size=4",
        "trainer.fast_dev_run=true",
    )
    assert math.isfinite(out["metrics"]["train/loss"]) and math.isfinite(
        out["metrics"]["val/sampled_accuracy"]
    )
    [sample_path] = out["samples"]
    music = muspy.read_midi(sample_path)
    assert [t.is_drum for t in music.tracks] == [False, False, True]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict:
    """A 2-bar melody MusicVAE trained for one short epoch on 24 Essen songs, validated once."""
    tmp = tmp_path_factory.mktemp("musicvae")
    torch.set_num_threads(1)
    return run_config(
        tmp,
        cache_dir,
        "model=musicvae",
        "data.source.limit=24",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=8",
        "logger=csv",
        "test=true",
    )


def test_a_trained_checkpoint_logs_the_figures_and_holds_attribute_vectors(trained: dict) -> None:
    metrics = trained["metrics"]
    for name in (
        "val/recon",
        "val/kl",
        "val/beta",
        "val/active_units",
        "val/kl_dim/000",
        "test/sampled_accuracy",
        "test/active_units",
        "test/kl_dim/000",
    ):
        assert name in metrics, name
    assert f"val/kl_dim/{TINY['z_size'] - 1:03d}" in metrics
    model = load_model(trained["last_ckpt"])
    defined = dict(zip(ATTRIBUTES, model.attribute_defined.tolist()))
    assert defined["note_density"] and defined["pitch_range"] and not defined["polyphony"]
    assert float(model.attribute_vectors[ATTRIBUTES.index("note_density")].norm()) > 0
    header = next(Path(trained["last_ckpt"]).parents[1].rglob("metrics.csv")).read_text().splitlines()[0]
    assert "val/sampled_accuracy" in header and "train/kl" in header


def test_encode_decode_from_python_and_attribute_sampling(trained: dict, tmp_path: Path) -> None:
    model = load_model(trained["last_ckpt"])
    torch.manual_seed(0)
    pieces = model.sample(3, temperature=1.0)
    z = model.encode(pieces)
    assert z.shape == (3, model.z_size)
    again = model.decode(z)
    assert len(again) == 3 and all(isinstance(m, muspy.Music) for m in again)
    base = torch.randn(4, model.z_size)
    shifted = model.shift_latents(base, "note_density:+1.0")
    assert torch.allclose(shifted - base, model.attribute_vectors[0].expand(4, -1), atol=1e-6)
    with pytest.raises(UserError, match="unknown; MusicVAE has note_density"):
        model.shift_latents(base, "loudness:1")
    with pytest.raises(UserError, match="no polyphony vector"):
        model.shift_latents(base, "polyphony:1")
    paths = sample(
        trained["last_ckpt"],
        n=2,
        out=str(tmp_path / "s"),
        render=False,
        options={"attribute": "note_density:+2"},
    )
    assert [len(muspy.read_midi(p).tracks) for p in paths] == [1, 1]


def test_interpolate_cli_writes_steps_the_whole_path_and_its_image(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a, b = tmp_path / "a.mid", tmp_path / "b.mid"
    rep = MelodyRepresentation(48, 88)
    muspy.write_midi(a, rep.decode(np.array([14, 0, 0, 0, 16, 0, 0, 0, 18, 0, 0, 0, 19, 0, 1, 0] * 2)))
    muspy.write_midi(b, rep.decode(np.array([26, 0, 24, 0, 23, 0, 21, 0, 19, 0, 0, 0, 0, 0, 1, 0] * 2)))
    ckpt = trained["last_ckpt"]
    interpolate_main(
        [f"ckpt={ckpt}", f"a={a}", f"b={b}", "steps=4", f"out={tmp_path / 'path'}", "audio=false"]
    )
    assert "wrote 4 steps and the whole path" in capsys.readouterr().out
    steps = sorted((tmp_path / "path").glob("step_*.mid"))
    assert [p.name for p in steps] == [f"step_{i:02d}.mid" for i in range(4)]
    pieces = [muspy.read_midi(p) for p in steps]
    whole = muspy.read_midi(tmp_path / "path" / "interpolation.mid")
    assert sum(len(t.notes) for t in whole.tracks) == sum(len(t.notes) for m in pieces for t in m.tracks)
    assert (tmp_path / "path" / "interpolation.png").stat().st_size > 0
    # the first step is A's reconstruction
    model = load_model(ckpt)
    reconstruction = model.representation.encode(model.decode(model.encode([NoteTable.read_midi(a)]))[0])
    first = model.representation.encode(NoteTable.read_midi(steps[0]))
    assert len(first) and np.array_equal(first, reconstruction[: len(first)])
    with pytest.raises(SystemExit) as exit_info:
        interpolate_main([f"ckpt={ckpt}", f"a={a}", "b=nope.mid"])
    assert exit_info.value.code == 2
    assert "muselab.interpolate: error: b=nope.mid: no such file" in capsys.readouterr().err


def test_interpolate_refuses_a_model_without_a_latent_space(tmp_path: Path) -> None:
    from lightning_modules.pianoroll_rnn import PianoRollRNN
    from tests.conftest import bach_representation

    rnn = PianoRollRNN(bach_representation(), hidden_size=8, num_layers=1)
    ckpt = tmp_path / "rnn.ckpt"
    class_path = "lightning_modules.pianoroll_rnn.PianoRollRNN"
    torch.save(
        {
            "muselab_model_class": class_path,
            "hyper_parameters": dict(rnn.hparams),
            "state_dict": rnn.state_dict(),
        },
        ckpt,
    )
    with pytest.raises(UserError, match="a PianoRollRNN has no latent space"):
        interpolate(str(ckpt), "60,62,64", "64,62,60", out=str(tmp_path / "i"), audio=False)


def test_a_shared_cache_built_with_a_lower_min_steps_leaves_out_the_short_pieces(tmp_path: Path) -> None:
    """min_steps is not in the cache key: a 16-bar run on the cache of a 2-bar run drops short pieces."""
    from datamodules import MusicDataModule
    from datamodules.sources import DataConfigError, FolderSource
    from tests.conftest import write_midi_folder

    root = write_midi_folder(tmp_path / "midi", n_good=8, bad=False)
    rep = PianoRollRepresentation(n_tracks=2, track_mode="index", pitch_low=36, pitch_high=84)

    def split_steps(min_steps: int) -> list[int]:
        dm = MusicDataModule(
            FolderSource(str(root)),
            rep,
            cache_dir=str(tmp_path / "cache"),
            window=8,
            min_steps=min_steps,
            n_jobs=1,
        )
        dm.setup()
        return sorted(len(a) for arrays in dm.split_arrays.values() for a in arrays)

    every = split_steps(1)
    longest = every[-1]
    assert every[0] < longest  # pieces of several lengths
    assert set(split_steps(longest)) == {longest}  # the shorter pieces of the same cache are left out
    with pytest.raises(
        DataConfigError, match=f"data.min_steps={longest + 1}: no piece of folder is that long"
    ):
        split_steps(longest + 1)


def test_the_trio_config_without_a_data_root_says_so_in_one_line(tmp_path: Path) -> None:
    cfg = compose_train(["model=musicvae_trio", "logger=none"], output_dir=tmp_path)
    with pytest.raises(UserError, match=r"^data.source.root must be given \(data.source.root=...\)$"):
        train(cfg)
