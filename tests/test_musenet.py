"""MuseNet and its event tokens: round trips on real chorales and on generated multi-instrument MIDI
with drums, conditioning prefixes in every window, bad tokens skipped and counted, causality, the
KV cache against recomputation, and training and sampling end to end."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import lightning as L
import muspy
import numpy as np
import pytest
import torch

from datamodules import WindowDataset
from datamodules.events import ConditioningError, EventRepresentation, distinct_programs
from datamodules.notes import NoteTable
from datamodules.representations import build_representation
from datamodules.sources import DataConfigError, Music21CorpusSource, load_item
from lightning_modules.base import CheckpointError, IncompatibleRepresentation, load_model
from lightning_modules.musenet import MuseNet, attention_mask, warmup_cosine
from tests.conftest import BACH_TRACKS
from tests.helpers import compose_train

CHORALE_LAYOUT = {
    "n_tracks": 4,
    "track_mode": "name",
    "track_names": [["soprano", "s."], ["alto", "a."], ["tenor", "t."], ["bass", "b."]],
    "programs": [52, 52, 52, 52],
}
PIANO, BASS, VIOLIN, DRUMS = 0, 33, 40, -1


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # two xdist workers share two cores


@pytest.fixture(scope="module")
def chorales() -> list[NoteTable]:
    return [load_item(item) for item in Music21CorpusSource("bach", limit=3).items()]


def chorale_events(**overrides) -> EventRepresentation:
    return EventRepresentation(**{**CHORALE_LAYOUT, "genre": "bach", **overrides})


def multi_instrument_music(seed: int, bars: int = 4, resolution: int = 24) -> muspy.Music:
    """Random music on a 16th-note grid: piano chords, a bass line, a violin melody and drums."""
    rng = np.random.default_rng(seed)
    sixteenth = resolution // 4
    music = muspy.Music(resolution=resolution, tempos=[muspy.Tempo(0, 120.0)])
    parts = [
        (PIANO, False, 48, 84, 3),
        (BASS, False, 28, 55, 1),
        (VIOLIN, False, 60, 96, 1),
        (0, True, 35, 81, 2),
    ]
    for program, is_drum, low, high, voices in parts:
        notes, free_from = [], {}  # a pitch sounds once at a time, as MIDI can say
        for step in range(0, bars * 16, 2):
            if rng.random() < 0.3:
                continue
            for pitch in rng.choice(np.arange(low, high + 1), size=voices, replace=False).tolist():
                if free_from.get(pitch, 0) <= step:
                    length = int(rng.integers(1, 9))
                    free_from[pitch] = step + length
                    notes.append(muspy.Note(step * sixteenth, pitch, length * sixteenth, 90))
        name = "drums" if is_drum else f"part {program}"
        music.tracks.append(muspy.Track(program=program, is_drum=is_drum, name=name, notes=notes))
    return music


def in_beats(music: muspy.Music, track: muspy.Track) -> list[tuple[Fraction, Fraction, int]]:
    """Notes as (onset, duration, pitch) in beats; durations capped at 12 beats, the longest
    duration token of the default tokenizer."""
    beat = music.resolution
    return sorted((Fraction(n.time, beat), min(Fraction(n.duration, beat), 12), n.pitch) for n in track.notes)


def write_and_read(music: muspy.Music, path: Path) -> NoteTable:
    muspy.write_midi(path, music)
    return NoteTable.read_midi(path)


# ------------------------------------------------------------------------------------ event tokens
def test_chorales_round_trip_as_four_instruments(chorales: list[NoteTable], tmp_path: Path) -> None:
    events = chorale_events()
    assert distinct_programs([52] * 4) == events.layout_programs == [52, 53, 51, 54]
    for i, table in enumerate(chorales):
        tokens = events.encode(table)
        prefix = [events.vocab[t] for t in tokens[: events.prefix_length(tokens)]]
        assert prefix == ["Genre_bach", "Instrument_51", "Instrument_52", "Instrument_53", "Instrument_54"]
        music = events.decode(tokens)
        assert {t.name for t in music.tracks} == {"soprano", "alto", "tenor", "bass"}
        assert events.check(tokens)[1] == 0
        source = table.to_music()
        for track in source.tracks:
            voice = next((v[0] for v in BACH_TRACKS if track.name.lower().startswith(v[0])), None)
            if voice is None:
                continue  # an instrumental doubling that the layout does not route (a horn)
            [decoded] = [t for t in music.tracks if t.name == voice]
            assert in_beats(music, decoded) == in_beats(source, track), f"{voice} of chorale {i}"
        # A decoded piece is a fixed point, also written to MIDI and read back.
        again = write_and_read(music, tmp_path / f"chorale{i}.mid")
        assert np.array_equal(events.encode(again), tokens)


def test_generated_multi_instrument_midi_with_drums_round_trips(tmp_path: Path) -> None:
    events = EventRepresentation(instruments="source", genre="folder")
    for seed in range(3):
        music = multi_instrument_music(seed)
        table = write_and_read(music, tmp_path / f"in{seed}.mid")
        tokens = events.encode(table)
        prefix = [events.vocab[t] for t in tokens[: events.prefix_length(tokens)]]
        assert prefix == ["Genre_folder", "Instrument_0", "Instrument_33", "Instrument_40", "Instrument_-1"]
        decoded = events.decode(tokens)
        assert [(t.program, t.is_drum) for t in decoded.tracks] == [
            (0, False),
            (33, False),
            (40, False),
            (0, True),
        ]
        assert decoded.tracks[-1].name == "Drums"
        for original in music.tracks:
            [match] = [
                t for t in decoded.tracks if (t.program, t.is_drum) == (original.program, original.is_drum)
            ]
            assert in_beats(decoded, match) == in_beats(music, original)
        again = write_and_read(decoded, tmp_path / f"out{seed}.mid")
        assert again.tracks[-1].is_drum
        assert np.array_equal(events.encode(again), tokens)


def test_decoding_skips_and_counts_tokens_in_an_impossible_order(tmp_path: Path) -> None:
    events = EventRepresentation(instruments="source", genre="folder")
    ids = events.tokenizer.vocab
    tokens = [*events.prefix([PIANO, DRUMS])]
    tokens += [ids["Bar_None"], ids["Position_0"], ids["Program_0"], ids["Pitch_60"], ids["Duration_1.0.8"]]
    tokens += [ids["Position_0"]]  # goes back in its bar: skipped
    tokens += [ids["Pitch_62"]]  # a pitch straight after a duration: skipped
    tokens += [ids["Position_8"], ids["Program_-1"], ids["Pitch_40"]]  # a pitched note on drums: skipped
    tokens += [ids["PitchDrum_36"], ids["Duration_0.4.8"]]
    tokens += [events.genre_id()]  # a conditioning token in the music: skipped
    tokens += [ids["Program_0"], ids["Position_16"]]  # a position ends the unfinished note: 1 skipped
    tokens += [ids["Program_0"], ids["Pitch_67"], ids["Duration_0.4.8"]]
    tokens += [ids["Program_0"], ids["Pitch_64"]]  # cut off by the end: dropped, not counted
    assert events.check(np.array(tokens))[1] == 5
    music = events.decode(np.array(tokens))
    assert [(t.is_drum, [(n.time, n.pitch) for n in t.notes]) for t in music.tracks] == [
        (False, [(0, 60), (16, 67)]),
        (True, [(8, 36)]),
    ]
    assert events.decode_report([np.array(tokens)]) == {"bad_tokens": 5.0, "bad_token_rate": 5 / 20}
    # Random ids, and real pieces shuffled, always decode to valid music that muspy can write.
    rng = np.random.default_rng(0)
    piece = events.encode(multi_instrument_music(0))
    for size in (0, 1, 7, 300):
        for array in (rng.integers(0, events.vocab_size, size), rng.permutation(piece)[:size]):
            music = events.decode(array)
            assert all(n.duration > 0 for t in music.tracks for n in t.notes)
            muspy.write_midi(tmp_path / "random.mid", music)
    report = events.decode_report([rng.permutation(piece)])
    assert 0.3 < report["bad_token_rate"] <= 1.0


def test_every_window_starts_with_its_pieces_conditioning_prefix(chorales: list[NoteTable]) -> None:
    events = chorale_events()
    pieces = [events.encode(t) for t in chorales]
    dataset = WindowDataset(pieces, events, window=96, stride=40, transpose=4, seed=1)
    seen: dict[int, set[int]] = {}
    for i, (piece, start) in enumerate(dataset.index):
        tokens = pieces[piece]
        prefix = events.prefix_length(tokens)
        for key in (i, (i, 3)):  # plain, and transposed as the training sampler asks
            example = dataset[key]
            window = example["x"][example["mask"]].numpy()
            assert np.array_equal(window[:prefix], tokens[:prefix])
            body = window[prefix:]
            if key == i:
                assert np.array_equal(body, tokens[start : start + 96 - prefix])
            else:  # transposed: the same tokens with the pitches moved, nothing else
                same = events._pitch_of[body] < 0
                assert np.array_equal(body[same], tokens[start : start + len(body)][same])
        seen.setdefault(piece, set()).update(range(start, start + 96 - prefix))
    for piece, tokens in enumerate(pieces):  # the windows cover every token after the prefix
        assert seen[piece] >= set(range(events.prefix_length(tokens), len(tokens)))
    with pytest.raises(DataConfigError, match=r"data\.window=4: no longer than the conditioning prefix"):
        WindowDataset(pieces, events, window=4)


def test_transposition_moves_pitches_never_drums_and_respects_the_range() -> None:
    events = EventRepresentation(instruments="source", genre="folder")
    tokens = events.encode(multi_instrument_music(1))
    low, high = events.pitch_extent(tokens)
    down, up = events.transpose_room(tokens)
    assert (down, up) == (low, events.n_pitches - 1 - high)
    moved = events.transpose(tokens, up)
    assert events.pitch_extent(moved) == (low + up, events.n_pitches - 1)
    before, after = events.decode(tokens), events.decode(moved)
    for a, b in zip(before.tracks, after.tracks):
        shift = 0 if a.is_drum else up
        assert [n.pitch + shift for n in a.notes] == [n.pitch for n in b.notes]


def test_to_config_rebuilds_the_same_tokenizer_and_refuses_another_vocabulary(
    chorales: list[NoteTable], tmp_path: Path
) -> None:
    events = chorale_events(tokenizer_config={"beat_res": {"0_4": 4, "4_12": 2}})
    config = json.loads(json.dumps(events.to_config()))
    rebuilt = build_representation(config)
    assert rebuilt.vocab == events.vocab and rebuilt.to_config() == events.to_config()
    assert np.array_equal(rebuilt.encode(chorales[0]), events.encode(chorales[0]))
    assert rebuilt.tokenizer.config.beat_res == {(0, 4): 4, (4, 12): 2}
    config["vocab"][10] = "Pitch_999"
    with pytest.raises(ValueError, match="rebuilds another vocabulary than the saved one"):
        build_representation(config)
    # A checkpoint whose vocabulary this miditok does not rebuild is a one-line checkpoint error.
    model = tiny_model(events)
    checkpoint = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    checkpoint["hyper_parameters"]["representation"] = config
    torch.save(checkpoint, tmp_path / "other-miditok.ckpt")
    with pytest.raises(
        CheckpointError, match=r"other-miditok\.ckpt: does not rebuild a MuseNet .*vocabulary"
    ):
        load_model(tmp_path / "other-miditok.ckpt")


def test_instruments_are_named_as_people_name_them() -> None:
    events = chorale_events()
    assert events.parse_instruments("piano,violin,cello") == [0, 40, 42]
    assert events.parse_instruments(["drums", "Electric Bass (finger)", 73]) == [33, 73, -1]
    assert events.parse_instruments("soprano,bass") == [52, 54]  # layout voices
    with pytest.raises(ConditioningError, match="instrument 'kazooka': not a General MIDI name"):
        events.parse_instruments("piano,kazooka")
    with pytest.raises(ConditioningError, match="genre 'polka': not in the vocabulary"):
        events.genre_id("polka")


# ------------------------------------------------------------------------------------ the model
def tiny_model(events: EventRepresentation | None = None, **kwargs) -> MuseNet:
    events = events or EventRepresentation(instruments="source", genre="folder")
    settings = {"n_layers": 2, "n_heads": 2, "d_model": 32, "context": 64, "dropout": 0.0, **kwargs}
    return MuseNet(events, **settings)


@pytest.mark.parametrize(
    "settings", [{}, {"positions": "learned"}, {"attention_window": 5}, {"tie_weights": False}]
)
def test_changing_token_t_never_changes_the_logits_before_t(settings: dict) -> None:
    torch.manual_seed(0)
    model = tiny_model(**settings).eval()
    tokens = torch.randint(0, model.input_vocab_size, (2, 40))
    logits, _ = model(tokens)
    for t in (0, 17, 39):
        changed = tokens.clone()
        changed[:, t] = (changed[:, t] + 1) % model.input_vocab_size
        other, _ = model(changed)
        torch.testing.assert_close(other[:, :t], logits[:, :t], rtol=0, atol=0)
        assert not torch.allclose(other[:, t], logits[:, t])
    if settings.get("attention_window"):
        # Local attention over 5 tokens in 2 layers: position t depends on t - 8 .. t only.
        changed = tokens.clone()
        changed[:, 20] = (changed[:, 20] + 1) % model.input_vocab_size
        other, _ = model(changed)
        assert torch.equal(other[:, 29:], logits[:, 29:]) and not torch.allclose(other[:, 28], logits[:, 28])


def test_attention_mask_is_causal_and_local() -> None:
    assert attention_mask(1, 9, None, torch.device("cpu")) is None
    mask = attention_mask(3, 6, 2, torch.device("cpu")).int().tolist()
    assert mask == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1]]


@pytest.mark.parametrize("settings", [{}, {"positions": "learned", "attention_window": 9}])
def test_kv_cache_gives_the_tokens_and_distributions_of_recomputation(settings: dict) -> None:
    torch.manual_seed(0)
    model = tiny_model(**settings).double().eval()
    # 150 tokens through a 64-token context: the window slides (and the cache is rebuilt) 4 times.
    cached = model.generate(3, 150, temperature=0.0, use_cache=True, strict_instruments=False)
    full = model.generate(3, 150, temperature=0.0, use_cache=False, strict_instruments=False)
    assert all(len(c) == 150 and np.array_equal(c, f) for c, f in zip(cached, full))
    draws = []
    for use_cache in (True, False):
        torch.manual_seed(7)
        draws.append(model.generate(4, 150, temperature=1.0, top_k=20, top_p=0.95, use_cache=use_cache))
    assert all(np.array_equal(a, b) for a, b in zip(*draws))
    # Step by step, the cached logits are those of the whole sequence.
    tokens = torch.randint(0, model.input_vocab_size, (2, 50))
    whole, _ = model(tokens)
    cache = model.new_cache()
    steps = [model(tokens[:, :20], cache)[0]] + [model(tokens[:, t : t + 1], cache)[0] for t in range(20, 50)]
    torch.testing.assert_close(torch.cat(steps, dim=1), whole)


@pytest.fixture(scope="module")
def trained_multi_instrument(tmp_path_factory: pytest.TempPathFactory) -> MuseNet:
    """A tiny MuseNet fitted to generated multi-instrument pieces until it writes valid tokens."""
    torch.manual_seed(0)
    events = EventRepresentation(instruments="source", genre="folder", sample_tokens=160)
    pieces = [events.encode(multi_instrument_music(seed)) for seed in range(16)]
    windows = WindowDataset(pieces, events, window=64, stride=32)
    data = torch.utils.data.DataLoader(windows, batch_size=8, shuffle=True)
    model = tiny_model(events, context=128, d_model=64, n_heads=4, warmup_steps=10)
    model.optimizer_factory = lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    trainer = L.Trainer(
        max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path_factory.mktemp("fit")),
    )  # fmt: skip
    trainer.fit(model, data)
    return model


def test_a_sample_is_valid_multi_instrument_midi_with_the_instruments_asked_for(
    trained_multi_instrument: MuseNet, tmp_path: Path
) -> None:
    from muselab.sample import main

    model = trained_multi_instrument
    torch.manual_seed(1)
    musics = model.sample(4, instruments="piano,violin,drums", bars=3, top_k=10)
    figures = model.last_sample_figures
    assert figures["bad_token_rate"] < 0.5  # 300 steps teach a tiny model most of REMI's grammar
    for music in musics:
        programs = {(t.program, t.is_drum) for t in music.tracks if t.notes}
        assert programs <= {(0, False), (40, False), (0, True)} and len(programs) >= 2
        assert len(music.barlines) <= 4  # 3 bars: 4 bar lines at most
    # The same through a checkpoint and the sample CLI, continuing a MIDI primer.
    checkpoint = {"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "musenet.ckpt")
    assert load_model(tmp_path / "musenet.ckpt").representation.vocab == model.representation.vocab
    primer = multi_instrument_music(99, bars=1)
    muspy.write_midi(tmp_path / "primer.mid", primer)
    main([f"ckpt={tmp_path / 'musenet.ckpt'}", "n=2", f"out={tmp_path / 's'}", f"prompt={tmp_path / 'primer.mid'}",
          "render=false", "instruments=piano,bass,violin,drums", "length=200"])  # fmt: skip

    def onsets(music: muspy.Music) -> set[tuple[int, bool, Fraction, int]]:
        # (A repeated pitch may cut a primer note short in MIDI: onsets and pitches are what stay.)
        beat = music.resolution
        return {
            (t.program, t.is_drum, Fraction(n.time, beat), n.pitch) for t in music.tracks for n in t.notes
        }

    paths = sorted((tmp_path / "s").glob("*.mid"))
    assert len(paths) == 2
    for path in paths:
        sample = muspy.read_midi(path)
        assert onsets(primer) < onsets(sample)  # the primer's notes, then the model's


def test_sample_options_fail_clearly(trained_multi_instrument: MuseNet) -> None:
    model = trained_multi_instrument
    with pytest.raises(ConditioningError, match="instrument 'kazoo'"):
        model.sample(1, instruments="kazoo")
    with pytest.raises(ValueError, match="does not take the sampling option"):
        model.sample(1, temperatur=0.5)


def test_musenet_refuses_other_representations() -> None:
    from datamodules.representations import MelodyRepresentation

    with pytest.raises(
        IncompatibleRepresentation, match="needs a multi-instrument event-token representation"
    ):
        MuseNet(MelodyRepresentation())


def test_weight_decay_spares_norms_and_biases_and_the_schedule_warms_up_then_decays() -> None:
    model = tiny_model()
    decay, no_decay = model.optimizer_parameters("model")
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 2 * 2 * 4 + 2
    factor = warmup_cosine(10, 110, 0.1)
    assert [round(factor(s), 3) for s in (0, 4, 9, 10, 60, 109, 500)] == [0.1, 0.5, 1.0, 1.0, 0.55, 0.1, 0.1]
    assert warmup_cosine(10, math.inf, 0.1)(1000) == 1.0


def test_fast_dev_run_through_the_train_cli_logs_bad_tokens(tmp_path: Path, cache_dir: Path) -> None:
    from muselab.train import train

    overrides = [
        "model=musenet", f"paths.cache_dir={cache_dir}", "data.source.limit=12", "data.window=64",
        "data.stride=64", "data.batch_size=4", "model.n_layers=1", "model.d_model=32", "model.n_heads=2",
        "model.context=64", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1", "trainer.accumulate_grad_batches=2", "trainer.precision=bf16-mixed",
        "callbacks.progress_bar=null", "callbacks.sample_music.n_samples=2", "callbacks.sample_music.n_audio=0",
        "callbacks.sample_music.length=48", "logger=none", "n_samples=1", "sample_length=48", "test=false",
        "torch_threads=1",
    ]  # fmt: skip
    out = train(compose_train(overrides, output_dir=tmp_path))
    metrics = out["metrics"]
    assert math.isfinite(metrics["train/loss_epoch"]) and "val/accuracy" in metrics
    assert 0.0 <= metrics["sample/bad_token_rate"] <= 1.0 and "sample/bad_tokens" in metrics
    checkpoint = torch.load(out["last_ckpt"], weights_only=False)
    assert checkpoint["global_step"] == 2  # 4 batches, accumulated 2 by 2
    assert checkpoint["hyper_parameters"]["representation"]["genre"] == "bach"
    # The cosine schedule ran per optimiser step: 2 of the 100 warm-up steps.
    [scheduler] = checkpoint["lr_schedulers"]
    assert scheduler["last_epoch"] == 2
    [midi] = out["samples"]
    assert muspy.read_midi(midi).resolution > 0


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path: Path) -> None:
    torch.manual_seed(0)
    eager = tiny_model()
    compiled = tiny_model(compile=True)
    compiled.load_state_dict(eager.state_dict())
    tokens = torch.randint(0, eager.vocab_size, (2, 48))
    batch = {"x": tokens, "mask": torch.ones_like(tokens, dtype=torch.bool)}
    torch.testing.assert_close(compiled.loss(batch)["loss"], eager.loss(batch)["loss"], rtol=1e-4, atol=1e-4)
