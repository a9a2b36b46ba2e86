"""Melody RNN (lightning_modules/melody_rnn.py): Magenta's encoders against hand-computed vectors,
labels that decode back to the melody, attention that reads only its window, and the three configs
trained for real and sampled (with primers from a MIDI file and a pitch list, and beam search)."""

from __future__ import annotations

import itertools
from pathlib import Path

import muspy
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules.representations import MelodyRepresentation
from lightning_modules.base import GenerativeModule
from lightning_modules.melody_rnn import AttentionLSTM, MelodyRNN, binary_counter
from tests.helpers import compose_train

torch.set_num_threads(1)
REPRESENTATION = MelodyRepresentation(pitch_low=48, pitch_high=83)  # Magenta's 48..84: 38 classes
# A one-bar figure C D E F (quarter notes, the last ended by a note-off), three times: 48 steps.
FIGURE = [60, -2, -2, -2, 62, -2, -2, -2, 64, -2, -2, -2, 65, -2, -2, -1] * 3


def tokens(events: list[int]) -> torch.Tensor:
    """Magenta melody events (pitch, -2 hold, -1 note off) as a (1, T) batch of our tokens."""
    return torch.tensor([[0 if e == -2 else 1 if e == -1 else e - 48 + 2 for e in events]])


def model(encoder: str = "lookback", attention_length: int = 0, **kwargs) -> MelodyRNN:
    torch.manual_seed(0)
    return MelodyRNN(REPRESENTATION, encoder=encoder, attention_length=attention_length, **kwargs).eval()


def inputs_at(m: MelodyRNN, events: list[int]) -> torch.Tensor:
    """The encoder's input vectors; row ``p`` is what the LSTM reads at melody event ``p`` (Magenta's
    position ``p``; our row 0 reads the begin token)."""
    return m.encoder(m.inputs(torch.cat([tokens(events), torch.zeros(1, 1, dtype=torch.long)], 1)))[0, 1:]


def nonzero(vector: torch.Tensor) -> dict[int, float]:
    return {int(i): float(vector[i]) for i in vector.nonzero().flatten()}


# ------------------------------------------------------------------------------------ encoders
def test_binary_counter_is_the_next_steps_position_in_plus_minus_one_bits() -> None:
    counter = binary_counter(torch.tensor([0, 1, 2, 3, 16, 31, 32]), 5).tolist()
    assert counter[0] == [-1, -1, -1, -1, -1]
    assert counter[1] == [1, -1, -1, -1, -1]  # bit 0 flips every 16th
    assert counter[2] == [-1, 1, -1, -1, -1]  # bit 1 every 8th
    assert counter[3] == [1, 1, -1, -1, -1]
    assert counter[4] == [-1, -1, -1, -1, 1]  # bit 4: the second bar
    assert counter[5] == [1, 1, 1, 1, 1]
    assert counter[6] == [-1, -1, -1, -1, -1]  # 5 bits wrap every two bars
    assert binary_counter(torch.tensor([32]), 7).tolist() == [[-1, -1, -1, -1, -1, 1, -1]]


def test_lookback_encoder_matches_hand_computed_vectors() -> None:
    m = model("lookback")
    assert m.encoder.input_size == 121 and m.n_classes == 40
    melody = [60, -2, 62, -1]
    x = inputs_at(m, melody)
    # Slots: current event [0,38), next event if repeating 1 bar [38,76) and 2 bars [76,114) (no-event
    # before the melody), counter of the *next* step 114..118, repeat flags 119, 120.
    c = lambda *bits: {114 + i: (1.0 if i in bits else -1.0) for i in range(5)}  # noqa: E731
    assert nonzero(x[0]) == {14: 1.0, 38: 1.0, 76: 1.0, **c(0)}  # 60 = class 60-48+2; next step 1
    assert nonzero(x[1]) == {0: 1.0, 38: 1.0, 76: 1.0, **c(1)}  # no-event; next step 2
    assert nonzero(x[2]) == {16: 1.0, 38: 1.0, 76: 1.0, **c(0, 1)}  # 62; next step 3
    assert nonzero(x[3]) == {1: 1.0, 38: 1.0, 76: 1.0, **c(2)}  # note-off; next step 4
    # Labels: 60 itself; a no-event in the first two bars is "repeat 2 bars" (39); 62; note-off.
    assert m.targets(tokens(melody)).tolist() == [[14, 39, 16, 1]]


def test_lookback_flags_next_events_and_labels_on_a_repeated_bar() -> None:
    m = model("lookback")
    x = inputs_at(m, FIGURE)
    # Step 31 (the first bar's note-off, played again): a repeat of 1 bar brings event 16 (60) next,
    # of 2 bars event 0 (60); the next step is 32 (all counter bits clear); it repeats 16 steps back.
    assert nonzero(x[31]) == {
        1: 1.0,
        38 + 14: 1.0,
        76 + 14: 1.0,
        **{114 + i: -1.0 for i in range(5)},
        119: 1.0,
    }
    assert x[32, 119:].tolist() == [1.0, 1.0]  # 60 at 32 repeats both 16 and 32 steps back
    assert x[15, 119:].tolist() == [0.0, 0.0]  # nothing to repeat in the first bar
    labels = m.targets(tokens(FIGURE))[0].tolist()
    first_bar = [14, 39, 39, 39, 16, 39, 39, 39, 18, 39, 39, 39, 19, 39, 39, 1]
    second_bar = [38, 39, 39, 39, 38, 39, 39, 39, 38, 39, 39, 39, 38, 39, 39, 38]  # early no-events: 39
    assert labels == first_bar + second_bar + [39] * 16  # both lookbacks apply: 2 bars preferred


def test_key_encoder_matches_hand_computed_vectors() -> None:
    m = model("key", attention_length=40)
    assert m.encoder.input_size == 74 and m.n_classes == 40
    x = inputs_at(m, [60, -2, 64, -1, 67, -2])
    c_keys = {0, 1, 3, 5, 7, 8, 10}  # the major keys whose scale holds C
    ceg_keys = {0, 5, 7}  # ... and C, E, G: C, F, G major
    # (pitch slot, [sounding, silent, attack, direction, flag 1 bar, flag 2 bars], next step, keys, recent keys)
    expected = [
        (12, [1, 0, 1, 0, 0, 0], 1, c_keys, c_keys),
        (12, [1, 0, 0, 0, 0, 0], 2, c_keys, c_keys),
        (16, [1, 0, 1, 1, 0, 0], 3, ceg_keys, ceg_keys),
        (None, [0, 1, 1, 1, 0, 0], 4, ceg_keys, ceg_keys),  # a note-off keeps the attack flag (Magenta)
        (19, [1, 0, 1, 1, 0, 0], 5, ceg_keys, ceg_keys),
    ]
    for p, (pitch, flags, step, keys, recent) in enumerate(expected):
        v = x[p]
        assert v[:36].nonzero().flatten().tolist() == ([] if pitch is None else [pitch])
        assert v[36:42].tolist() == flags
        assert v[42:49].tolist() == binary_counter(torch.tensor([step]), 7)[0].tolist()
        assert v[49].item() == 0.0  # the next step starts no bar
        assert set(v[50:62].nonzero().flatten().tolist()) == keys
        assert set(v[62:74].nonzero().flatten().tolist()) == recent
    # Labels share the lookback layout: tokens, then repeat 1 bar (38) and 2 bars (39).
    assert m.targets(tokens([60, -2, 64, -1, 67, -2])).tolist() == [[14, 39, 18, 1, 21, 39]]
    # Descending, and the recent key forgets notes older than the last three distinct pitches.
    y = inputs_at(m, [72, 71, 69, 67, 65])
    assert y[4, 39].item() == -1.0
    assert set(y[4, 62:74].nonzero().flatten().tolist()) == {0, 5, 10}  # A, G, F: C, F and Bb major


def test_labels_decode_back_to_the_melody() -> None:
    """Encode, then decode: the labels, resolved step by step as sampling does, give the melody back."""
    rng = np.random.default_rng(0)
    bar = rng.integers(0, 38, size=16)
    melody = np.concatenate([bar, rng.integers(0, 38, size=16), bar, bar, rng.integers(0, 38, 23)])
    x = torch.cat([tokens(FIGURE)[:, :48], torch.from_numpy(melody[None, :48])])
    for encoder in ("lookback", "key"):
        m = model(encoder)
        labels = m.targets(x)
        assert (labels >= 38).any() and (labels < 38).any()
        decoded = torch.zeros(2, 0, dtype=torch.long)
        for q in range(x.shape[1]):
            decoded = torch.cat([decoded, m.classes_to_tokens(labels[:, q], decoded)[:, None]], 1)
        assert torch.equal(decoded, x)
    # And the melody itself survives the representation: tokens -> MIDI notes -> tokens.
    assert (
        REPRESENTATION.encode(REPRESENTATION.decode(tokens(FIGURE)[0].numpy())).tolist()[:47]
        == tokens(FIGURE)[0, :47].tolist()
    )  # the final note-off is implied by the end of the piece


def test_event_probabilities_add_repeat_labels_to_the_events_they_stand_for() -> None:
    m = model("lookback")
    x = tokens(FIGURE)
    logits, _ = m(m.inputs(x))
    events = m.event_probabilities(logits, x)
    torch.testing.assert_close(events.sum(-1), torch.ones(1, 48))
    probs = torch.softmax(logits, -1)
    # At step 41 (a hold, repeating 16 and 32 steps back) both repeat labels stand for a no-event.
    torch.testing.assert_close(events[0, 41, 0], probs[0, 41, 0] + probs[0, 41, 38] + probs[0, 41, 39])
    out = m.loss({"x": x, "mask": torch.ones_like(x, dtype=torch.bool)})
    assert out["event_nll"] <= out["loss"]


# ------------------------------------------------------------------------------------ attention
def test_attention_weights_sum_to_one_and_read_only_the_last_outputs() -> None:
    torch.manual_seed(0)
    length, hidden = 5, 8
    layer = AttentionLSTM(input_size=6, hidden_size=hidden, length=length).eval()
    x = torch.randn(3, 17, 6)
    out, _, weights = layer(x, return_weights=True)
    assert weights.shape == (3, 17, length)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 17))
    # Step by step: the attention vector a_t is the weighted sum of exactly the `length` outputs
    # before t (zeros before the start), and the window then moves on by one output.
    padded = torch.cat([torch.zeros(3, length, hidden), out], 1)
    state = None
    for t in range(17):
        y, state, w = layer(x[:, t : t + 1], state, return_weights=True)
        torch.testing.assert_close(y[:, 0], out[:, t])
        torch.testing.assert_close(state.attention, (w[:, 0, :, None] * padded[:, t : t + length]).sum(1))
        torch.testing.assert_close(state.window, padded[:, t + 1 : t + 1 + length])


@pytest.mark.parametrize(("encoder", "attention_length"), [("basic", 0), ("lookback", 0), ("key", 40)])
def test_padding_is_skipped_exactly_and_the_cache_equals_recomputing(
    encoder: str, attention_length: int
) -> None:
    m = model(encoder, attention_length, hidden_size=16)
    rng = torch.Generator().manual_seed(1)
    lengths = [50, 20, 37]
    x = torch.zeros(3, 60, dtype=torch.long)
    mask = torch.zeros(3, 60, dtype=torch.bool)
    for row, n in enumerate(lengths):
        x[row, :n] = torch.randint(0, 38, (n,), generator=rng)
        mask[row, :n] = True
    batch_loss = m.loss({"x": x, "mask": mask})["loss"]
    total = sum(
        F.cross_entropy(m(m.inputs(x[r : r + 1, :n]))[0][0], m.targets(x[r : r + 1, :n])[0], reduction="sum")
        for r, n in enumerate(lengths)
    )
    torch.testing.assert_close(batch_loss, total / sum(lengths))
    cached = m.generate(2, 40, temperature=0.0, prompt=x[:2, :9])
    assert torch.equal(cached, m.generate(2, 40, temperature=0.0, prompt=x[:2, :9], use_cache=False))
    assert torch.equal(cached[:, :9], x[:2, :9])


# ------------------------------------------------------------------------------------ beam search
def test_beam_search_keeps_the_most_likely_of_its_sampled_candidates() -> None:
    m = model("basic", hidden_size=16)  # classes are tokens: a score is the sequence's log-likelihood
    torch.manual_seed(3)
    candidates = m.generate(6, 24)  # six plain samples ...
    torch.manual_seed(3)
    best = m.generate(1, 24, beam_size=1, branch_factor=6, steps_per_iteration=24)  # ... the same draws
    logits, _ = m(m.inputs(candidates))
    loglik = -F.cross_entropy(logits.transpose(1, 2), candidates, reduction="none").sum(1)
    assert torch.equal(best[0], candidates[loglik.argmax()])
    # Several pruning rounds (the first one shorter), several melodies, a primer: shapes and primer kept.
    m = model("lookback", attention_length=8, hidden_size=16)
    primer = tokens([60, -2, 64, -2, 67])
    out = m.generate(3, 30, prompt=primer.expand(3, -1), beam_size=2, branch_factor=3, steps_per_iteration=4)
    assert out.shape == (3, 30) and torch.equal(out[:, :5], primer.expand(3, -1))
    assert ((out >= 0) & (out < 38)).all()


# ------------------------------------------------------------------------------------ training and sampling
def read_notes(path: Path) -> list[muspy.Note]:
    music = muspy.read_midi(path).adjust_resolution(4)
    return [n for track in music.tracks for n in track.notes]


def assert_monophonic_melody(notes: list[muspy.Note]) -> None:
    assert notes, "an empty melody"
    assert all(a.time + a.duration <= b.time for a, b in itertools.pairwise(notes)), "two notes at once"


@pytest.mark.parametrize("name", ["melody_rnn_basic", "melody_rnn_lookback", "melody_rnn_attention"])
def test_each_config_trains_on_essen_and_samples_monophonic_midi(
    name: str, tmp_path: Path, cache_dir: Path
) -> None:
    from muselab.train import train

    cfg = compose_train(
        [
            f"model={name}",
            f"paths.cache_dir={cache_dir}",
            "data.source.limit=24",
            "data.batch_size=8",
            "model.hidden_size=16",
            "trainer.fast_dev_run=true",
            "n_samples=2",
            "sample_length=48",
            "callbacks.progress_bar=null",
            "callbacks.sample_music.n_audio=0",
            "logger=none",
            "torch_threads=1",
        ],
        output_dir=tmp_path,
    )
    out = train(cfg)
    assert np.isfinite(out["metrics"]["train/loss"]) and "val/event_nll" in out["metrics"]
    assert len(out["samples"]) == 2
    for path in out["samples"]:
        notes = read_notes(Path(path))
        assert_monophonic_melody(notes)
        assert all(48 <= n.pitch <= 83 for n in notes)


def save_checkpoint(m: GenerativeModule, path: Path) -> Path:
    checkpoint = {"hyper_parameters": dict(m.hparams), "state_dict": m.state_dict()}
    m.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_samples_start_with_a_midi_primer_or_a_pitch_list(tmp_path: Path) -> None:
    from muselab.sample import main

    rep = MelodyRepresentation(pitch_low=48, pitch_high=83, transpose_to_c=True)
    torch.manual_seed(0)
    ckpt = save_checkpoint(
        MelodyRNN(rep, encoder="lookback", attention_length=8, hidden_size=16), tmp_path / "m.ckpt"
    )
    # A D major scale in quarter notes: read in C, continued, and moved back to D.
    scale = [62, 64, 66, 67, 69, 71, 73]
    primer = muspy.Music(resolution=24, tempos=[muspy.Tempo(0, 120.0)])
    primer.tracks.append(muspy.Track(notes=[muspy.Note(24 * i, p, 24, 90) for i, p in enumerate(scale)]))
    assert rep.key_shift(primer) == -2
    muspy.write_midi(tmp_path / "scale.mid", primer)
    main(
        [
            f"ckpt={ckpt}",
            "n=2",
            f"out={tmp_path / 'a'}",
            f"prompt={tmp_path / 'scale.mid'}",
            "render=false",
            "bars=4",
        ]
    )
    # Four 16th notes, with Magenta's beam search.
    main(
        [
            *(f"ckpt={ckpt}", "n=2", f"out={tmp_path / 'b'}", "prompt=60,62,64,65", "render=false", "bars=2"),
            *("beam_size=2", "branch_factor=2", "steps_per_iteration=4", "temperature=0.8"),
        ]
    )
    for folder, expected, steps in (
        ("a", [(4 * i, p) for i, p in enumerate(scale)], 64),
        ("b", [(0, 60), (1, 62), (2, 64), (3, 65)], 32),
    ):
        paths = sorted((tmp_path / folder).glob("*.mid"))
        assert len(paths) == 2
        for path in paths:
            notes = read_notes(path)
            assert [(n.time, n.pitch) for n in notes[: len(expected)]] == expected
            assert_monophonic_melody(notes)
            assert max(n.time + n.duration for n in notes) <= steps
    model_ = MelodyRNN(rep, encoder="basic", hidden_size=16)
    with pytest.raises(ValueError, match="not longer than the primer"):
        model_.sample(1, prompt=primer, bars=1)


# ------------------------------------------------------------------------------------ benchmark
def test_repeated_bar_share_counts_exact_repeats_of_earlier_bars() -> None:
    from muselab.bench.melody import repeated_bar_share

    def bar(pitches: list[int], start: int) -> list[muspy.Note]:
        return [muspy.Note(start + 4 * i, p, 4, 80) for i, p in enumerate(pitches)]

    a, b = [60, 62, 64, 65], [67, 65, 64, 62]
    music = muspy.Music(resolution=4)
    # Bars A B A (silence) A B', where B' is B moved by a semitone: 5 sounding bars, 2 repeats.
    notes = bar(a, 0) + bar(b, 16) + bar(a, 32) + bar(a, 64) + bar([p + 1 for p in b], 80)
    music.tracks.append(muspy.Track(notes=notes))
    assert repeated_bar_share(music) == (2, 5)
    # A note held over the bar line makes the next bar differ from one that starts afresh.
    held = muspy.Music(resolution=4, tracks=[muspy.Track(notes=[muspy.Note(0, 60, 32, 80)])])
    assert repeated_bar_share(held) == (0, 2)
    assert repeated_bar_share(muspy.Music(resolution=4, tracks=[muspy.Track()])) == (0, 0)


@pytest.mark.slow
def test_bench_melody_end_to_end_on_a_few_essen_songs(tmp_path: Path, cache_dir: Path) -> None:
    from muselab.bench import melody as bench

    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other\n\nkeep me\n")
    out = bench.main(
        [
            "models=basic,attention",
            "max_epochs=2",
            "threads=1",
            "n_samples=4",
            "bars=4",
            "n_real=8",
            f"docs={docs}",
            f"runs_dir={tmp_path / 'runs'}",
            f"paths.cache_dir={cache_dir}",
            "data.source.limit=24",
            "data.batch_size=8",
            "model.hidden_size=16",
        ]
    )
    rows = {r["model"]: r for r in out["rows"]}
    assert set(rows) == {"basic", "attention"}
    for row in rows.values():
        assert row["epochs"] == 2 and [h["epoch"] for h in row["history"]] == [0, 1]
        assert row["test"]["test/event_nll"] <= row["test"]["test/loss"] + 1e-6
        assert 0.0 <= row["structure"]["repeated_bar_share"] <= 1.0 and row["structure"]["pieces"] == 4
        assert "sample/pitch_class_entropy" in row["samples"]
    # The basic model's event NLL is its label NLL (no repeat labels).
    assert rows["basic"]["test"]["test/event_nll"] == pytest.approx(rows["basic"]["test"]["test/loss"])
    text = docs.read_text()
    assert "keep me" in text and text.count(bench.SECTION) == 1
    for heading in ("### Test split", "### Train/val gap over epochs", "### Long-term structure"):
        assert heading in text
    assert f"**{rows['attention']['test']['test/event_nll']:.3f}**" in text


def test_bad_settings_are_one_line_errors_naming_the_key() -> None:
    from muselab.errors import UserError

    with pytest.raises(
        UserError, match=r"model\.encoder must be one of basic, lookback, key, not 'lookahead'"
    ):
        MelodyRNN(REPRESENTATION, encoder="lookahead")
    with pytest.raises(UserError, match="at least 1"):
        model("basic").generate(1, 16, beam_size=0)


def test_a_multitrack_primer_gives_its_melody_even_to_a_model_trained_on_track_0() -> None:
    """Essen checkpoints read track 0 (the tunes have one track); a user's primer with the bass first
    and a track named Melody must still give the melody, not the bass."""
    melody = [muspy.Note(4 * i, 64 + (i % 3), 4, 80) for i in range(8)]
    bass = [muspy.Note(8 * i, 40, 8, 80) for i in range(4)]
    music = muspy.Music(
        resolution=4,
        tracks=[
            muspy.Track(program=33, name="Bass", notes=bass),
            muspy.Track(program=0, name="Melody", notes=melody),
        ],
    )
    rep = MelodyRepresentation(pitch_low=36, pitch_high=83, track=0)
    model_ = MelodyRNN(rep, encoder="basic", hidden_size=16)
    prompt = model_.encode_prompt(music, 1)[0].numpy()
    assert np.array_equal(prompt, MelodyRepresentation(pitch_low=36, pitch_high=83, track=1).encode(music))
    assert not np.array_equal(prompt, rep.encode(music))  # track 0 (the bass) is what the data setting reads
    assert rep.track == 0  # the model's own representation is untouched
