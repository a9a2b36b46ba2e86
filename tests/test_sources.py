"""The dataset sources on small real fixtures laid out like each dataset on disk (no network)."""

from __future__ import annotations

import csv
import json
import os
import re
import zipfile
from pathlib import Path

import muspy
import numpy as np
import pytest

from datamodules import MusicDataModule
from datamodules.representations import MelodyRepresentation, PianoRollRepresentation
from datamodules.sources import (
    DataConfigError,
    EssenSource,
    JSBSource,
    LakhSource,
    MaestroSource,
    Music21CorpusSource,
    NottinghamSource,
    jsb_steps_to_table,
    load_item,
    musicxml_part_names,
    voices_by_rank,
)
from tests.conftest import bach_representation, random_music, write_midi_folder

# Two tunes in one file whose very first line is `X: 1` (the tune muspy's splitter drops), with
# chord symbols, and a file-level comment before nothing else.
NOTTINGHAM_ABC = """X: 1
T:First Tune
% Nottingham Music Database
M:4/4
L:1/8
K:G
"G"GABc "D"d2B2|"C"c2e2 "G"d4|"D7"ABAG FGA2|"G"G8|]

X: 2
T:Second Tune
M:6/8
L:1/8
K:D
"D"d2f a2f|"A"e2c A3|"G"B2d "A7"c2e|"D"d6|]
"""
SINGLE_TUNE_ABC = """X: 7
T:Only Tune
M:3/4
L:1/4
K:C
"C"c e g|"F"f a c'|"G7"d g B|"C"c3|]
"""


def make_nottingham(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "jigs.abc").write_text(NOTTINGHAM_ABC)
    (root / "sub" / "waltz.abc").write_text(SINGLE_TUNE_ABC)
    return root


def pianoroll(**overrides) -> PianoRollRepresentation:
    kwargs = {"n_tracks": 1, "track_mode": "merge", "pitch_low": 21, "pitch_high": 108}
    return PianoRollRepresentation(**(kwargs | overrides))


def datamodule(source, representation, tmp_path: Path, **overrides) -> MusicDataModule:
    kwargs = {"cache_dir": str(tmp_path / "cache"), "window": 16, "batch_size": 4, "n_jobs": 1}
    return MusicDataModule(source, representation, **(kwargs | overrides))


# ------------------------------------------------------------------------------------------ Nottingham
def test_nottingham_keeps_first_tune_marks_root_and_reads_chords(tmp_path: Path) -> None:
    root = make_nottingham(tmp_path / "nmd")
    source = NottinghamSource(str(root))
    items = source.items()
    assert (root / ".muspy.success").is_file()  # created for the local root, as muspy requires
    assert [i.key for i in items] == ["jigs.abc#0:X1", "jigs.abc#1:X2", "sub/waltz.abc#0:X7"]
    # The shim matters: muspy's own splitter loses both tunes that start on a file's first line.
    assert len(muspy.NottinghamDatabase(str(root))) == 1

    table = load_item(items[0])
    melody, chords = table.tracks[:2]
    assert (melody.name, chords.name) == ("melody", "chords")
    assert len(melody.notes) == 6 + 3 + 7 + 1
    # "G" "D" "C" "G" "D7" "G": three or four notes each, each held until the next symbol.
    assert len(chords.notes) == 3 + 3 + 3 + 3 + 4 + 3
    onsets = np.unique(chords.notes[:, 0])
    assert onsets[0] == 0 and table.end_tick == 4 * 4 * table.resolution
    assert int((chords.notes[:, 0] + chords.notes[:, 1]).max()) == table.end_tick

    melody_only = NottinghamSource(str(root), chords=False)
    assert {i.loader for i in melody_only.items()} == {"abc"}
    assert melody_only.fingerprint() != source.fingerprint()


def test_download_path_goes_through_muspy_without_network(tmp_path: Path, capsys) -> None:
    # With the marker present muspy's real download_and_extract() skips the download: the code path
    # of download=True runs up to and including the construction of muspy's class.
    root = make_nottingham(tmp_path / "nmd")
    (root / ".muspy.success").touch()
    assert len(NottinghamSource(str(root), download=True).items()) == 3
    assert "Skip downloading" in capsys.readouterr().out


@pytest.mark.parametrize("cls", [NottinghamSource, JSBSource, LakhSource, MaestroSource])
def test_missing_or_empty_root_is_a_clear_error(cls, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dataset"
    source = cls(str(missing))
    for call in (source.check, source.items, source.fingerprint):
        with pytest.raises(
            DataConfigError, match=re.escape(f"data.source.root={missing}: no such directory")
        ):
            call()
    assert not missing.exists()  # muspy would have created it
    empty = tmp_path / "empty"
    empty.mkdir()
    for call in (cls(str(empty)).check, cls(str(empty)).items):
        with pytest.raises(DataConfigError, match=re.escape(f"data.source.root={empty}: no music files")):
            call()


# ------------------------------------------------------------------------------------------------ JSB
def separated_chorale(rng: np.random.Generator, n_steps: int = 32) -> list[list[int]]:
    """Four voices per step, bass first (to check voices are ordered by pitch), -1 for a rest."""
    steps = []
    for t in range(n_steps):
        chord = [int(rng.integers(40, 50)), int(rng.integers(52, 60)), 60 + t % 3, 70 + t % 5]
        if t % 8 == 7:
            chord[2] = -1
        steps.append(chord)
    return steps


def write_jsb(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    data = {
        "train": [separated_chorale(rng) for _ in range(4)],
        "valid": [separated_chorale(rng) for _ in range(2)],
        "test": [separated_chorale(rng) for _ in range(2)],
    }
    (root / "Jsb16thSeparated.json").write_text(json.dumps(data))
    # muspy's download: "JSB Chorales/<split>/*.mid", one stream of chords, 120 ticks per quarter
    # but a header that says 100.
    chords = [[48, 55, 64, 72], [47, 55, 62, 74], [48, 52, 60, 72], [43, 55, 62, 71]] * 4
    notes = [muspy.Note(120 * t, p, 120, 80) for t, chord in enumerate(chords) for p in chord]
    music = muspy.Music(resolution=100, tracks=[muspy.Track(program=0, notes=notes)])
    (root / "JSB Chorales" / "valid").mkdir(parents=True)
    muspy.write_midi(root / "JSB Chorales" / "valid" / "12.mid", music)
    return root


def test_jsb_keeps_official_split_and_voices(tmp_path: Path) -> None:
    root = write_jsb(tmp_path / "jsb")
    source = JSBSource(str(root))
    # The folder holds both forms; one is read (voiced JSON by default), the other on request.
    items = source.items() + JSBSource(str(root), format="midi").items()
    assert (root / ".muspy.success").is_file()
    by_split = {s: sorted(i.key for i in items if i.split == s) for s in ("train", "val", "test")}
    assert len(by_split["train"]) == 4 and len(by_split["test"]) == 2
    assert by_split["val"] == [
        "JSB Chorales/valid/12.mid",
        "Jsb16thSeparated.json/valid/0000",
        "Jsb16thSeparated.json/valid/0001",
    ]
    by_split["val"] = by_split["val"][1:]  # what the datamodule below reads: the JSON form

    table = load_item(next(i for i in items if i.loader == "jsb_steps"))
    assert table.resolution == 4  # 16th notes, from the file name
    assert [t.name for t in table.tracks] == ["soprano", "alto", "tenor", "bass"]
    means = [t.notes[:, 2].mean() for t in table.tracks]
    assert means == sorted(means, reverse=True)
    assert len(table.tracks[1].notes) == 32 - 4  # the alto moves every step and rests every 8th

    midi = load_item(next(i for i in items if i.loader == "jsb_midi"))
    assert midi.resolution == 120 and [t.name for t in midi.tracks] == ["soprano", "alto", "tenor", "bass"]
    assert [len(t.notes) for t in midi.tracks] == [16, 16, 16, 16]
    assert midi.end_tick == 16 * 120  # 16 quarter notes once the resolution is fixed

    dm = datamodule(source, bach_representation(), tmp_path)
    dm.setup()
    assert sorted(dm.split_keys["val"]) == by_split["val"]
    assert sorted(dm.split_keys["test"]) == by_split["test"]
    assert dm.data_summary()["data/skipped"] == 0


def test_jsb_chord_lists_split_into_voices_by_rank() -> None:
    # Boulanger-style chord lists: any number of sounding pitches per step (here a unison).
    steps = [[48, 55, 64, 72], [48, 55, 64, 72], [50, 62, 71], [], [43, 59, 62, 67]]
    table = jsb_steps_to_table(steps, steps_per_quarter=1)
    soprano, alto, tenor, bass = (t.notes[:, :3].tolist() for t in table.tracks)
    assert soprano == [[0, 2, 72], [2, 1, 71], [4, 1, 67]]
    assert alto == [[0, 2, 64], [2, 1, 62], [4, 1, 62]]
    assert tenor == [[0, 2, 55], [4, 1, 59]]
    assert bass == [[0, 2, 48], [2, 1, 50], [4, 1, 43]]
    merged = np.concatenate([t.notes for t in table.tracks])
    assert len(merged) == 11  # no note lost
    assert [len(t.notes) for t in voices_by_rank(merged)] == [3, 3, 2, 3]


def test_jsb_json_resolution_must_be_known(tmp_path: Path) -> None:
    (tmp_path / "chorales.json").write_text(json.dumps({"train": [[[60, 64, 67, 72]]]}))
    with pytest.raises(ValueError, match="steps_per_quarter"):
        JSBSource(str(tmp_path)).items()
    assert JSBSource(str(tmp_path), steps_per_quarter=2).items()[0].payload[1] == 2


# ----------------------------------------------------------------------------------------------- Lakh
def test_lakh_skips_and_counts_broken_files_and_fingerprints_content(tmp_path: Path) -> None:
    root = write_midi_folder(tmp_path / "lmd_matched", n_good=6)
    source = LakhSource(str(root), variant="matched")
    items = source.items()
    assert isinstance(source.dataset_class()(str(root)), muspy.LakhMIDIMatchedDataset)  # marker made
    assert len(items) == 9 and {i.loader for i in items} == {"midi"} and {i.split for i in items} == {None}
    representation = PianoRollRepresentation(
        n_tracks=5,
        track_mode="program",
        program_groups=[[0, 7], [24, 31], [32, 39], [40, 55], [0, 127]],
        pitch_low=24,
        pitch_high=108,
    )
    dm = datamodule(source, representation, tmp_path)
    dm.setup()
    summary = dm.data_summary()
    assert summary["data/skipped"] == 3
    assert summary["data/skipped_by_reason"] == {"unreadable": 2, "no notes": 1}
    assert sum(summary[f"data/pieces_{s}"] for s in ("train", "val", "test")) >= 6

    before = source.fingerprint()
    assert LakhSource(str(root), variant="aligned").fingerprint() != before
    good = root / "a" / "piece1.mid"
    os.utime(good, ns=(good.stat().st_atime_ns, good.stat().st_mtime_ns + 1_000_000))
    assert source.fingerprint() != before
    with pytest.raises(ValueError, match="variant"):
        LakhSource(str(root), variant="clean")


# -------------------------------------------------------------------------------------------- MAESTRO
def write_maestro(root: Path) -> tuple[Path, dict[str, str]]:
    rng = np.random.default_rng(1)
    base = root / "maestro-v3.0.0"
    splits = {"a": "train", "b": "train", "c": "train", "d": "validation", "e": "validation", "f": "test"}
    rows = []
    for name, split in splits.items():
        relative = f"2004/{name}.midi"
        (base / "2004").mkdir(parents=True, exist_ok=True)
        muspy.write_midi(base / relative, random_music(rng, n_tracks=1))
        rows.append({"canonical_composer": "X", "canonical_title": name, "split": split, "year": 2004,
                     "midi_filename": relative, "audio_filename": relative.replace(".midi", ".wav"),
                     "duration": 10.0})  # fmt: skip
    muspy.write_midi(base / "2004" / "extra.midi", random_music(rng, n_tracks=1))  # no CSV row
    with (base / "maestro-v3.0.0.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return base / "maestro-v3.0.0.csv", splits


def test_maestro_official_split_from_csv(tmp_path: Path) -> None:
    csv_path, splits = write_maestro(tmp_path / "maestro")
    source = MaestroSource(str(tmp_path / "maestro"))
    items = {i.key: i.split for i in source.items()}
    expected = {f"maestro-v3.0.0/2004/{n}.midi": {"validation": "val"}.get(s, s) for n, s in splits.items()}
    assert items == {**expected, "maestro-v3.0.0/2004/extra.midi": None}

    dm = datamodule(source, pianoroll(), tmp_path)
    dm.setup()
    for split in ("train", "val", "test"):
        assert {k for k in dm.split_keys[split] if k in expected} == {
            k for k, s in expected.items() if s == split
        }
    assert any("maestro-v3.0.0/2004/extra.midi" in keys for keys in dm.split_keys.values())

    before = source.fingerprint()
    csv_path.write_text(csv_path.read_text().replace("test", "train"))
    assert source.fingerprint() != before
    with pytest.raises(ValueError, match="version"):
        MaestroSource(str(tmp_path), version=4)


# ---------------------------------------------------------------------------------- music21 corpora
def test_essen_with_limit_through_the_datamodule(tmp_path: Path) -> None:
    source = EssenSource(limit=3)
    items = source.items()
    assert len(items) == 3 and all(i.key.startswith("essenFolksong/altdeu10.abc#") for i in items)
    assert items[0].key.endswith(":X1")  # the first tune of the first file is kept
    assert source.fingerprint() != EssenSource(limit=4).fingerprint()
    dm = datamodule(source, MelodyRepresentation(pitch_low=48, pitch_high=88), tmp_path, min_steps=4)
    dm.setup()
    summary = dm.data_summary()
    assert summary["data/skipped"] == 0
    assert len(set().union(*dm.split_keys.values())) == 3


def test_bach_end_to_end_with_a_fresh_cache(tmp_path: Path) -> None:
    dm = datamodule(Music21CorpusSource("bach", limit=3), bach_representation(), tmp_path)
    dm.setup()
    assert len(list((tmp_path / "cache").glob("music21-*/manifest.json"))) == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape[1:] == (16, 4, 49)
    assert batch["x"][:, :, 0].any() and batch["x"][:, :, 3].any()  # soprano and bass routed by name


def test_musicxml_part_names_are_read_from_the_part_list_alone(tmp_path: Path) -> None:
    chorales = {Path(item.path).name: item.path for item in Music21CorpusSource("bach").items()}
    assert musicxml_part_names(chorales["bwv66.6.mxl"]) == ["Soprano", "Alto", "Tenor", "Bass"]
    part_list = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<score-partwise xmlns="http://example.org/ns"><part-list>'
        '<score-part id="P1"><part-name>Flute </part-name></score-part>'
        '<score-part id="P2"><part-name/></score-part></part-list>'
    )
    # Reading stops at the end of the part list: what follows it (here, not even XML) is never read.
    path = tmp_path / "score.musicxml"
    path.write_text(part_list + "<part id='P1'><measure <<< truncated")
    assert musicxml_part_names(path) == ["Flute", ""]
    archive = tmp_path / "score.mxl"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("META-INF/container.xml", "<container/>")
        z.writestr("score.xml", part_list + "</score-partwise>")
    assert musicxml_part_names(archive) == ["Flute", ""]


# -------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("data", "source_class", "n_tracks"),
    [
        ("essen", EssenSource, 1),
        ("nottingham", NottinghamSource, 2),
        ("jsb", JSBSource, 4),
        ("lakh", LakhSource, 5),
        ("maestro", MaestroSource, 1),
    ],
)
def test_data_config_instantiates(data: str, source_class: type, n_tracks: int, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from tests.helpers import compose_train

    root = [] if data == "essen" else [f"data.source.root={tmp_path}"]
    cfg = compose_train([f"data={data}", *root], output_dir=tmp_path)
    dm = instantiate(cfg.data, _convert_="all")
    assert isinstance(dm.source, source_class) and dm.name == data
    assert dm.representation.n_tracks == n_tracks
    if data != "essen":
        assert dm.source.root == str(tmp_path) and dm.source.download is False
    melody = compose_train([f"data={data}", "representation=melody", *root], output_dir=tmp_path)
    assert instantiate(melody.data, _convert_="all").representation.kind == "tokens"
