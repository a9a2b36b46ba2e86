"""Write samples from any checkpoint: ``python -m muselab.sample ckpt=PATH n=4 out=samples`` (``make sample``).

Arguments and their defaults are in ``conf/sample.yaml``; any other ``key=value`` is a sampling
option passed to the model unchanged (``top_k=8``, ``chords="C G Am F"``, ...). ``prompt=`` (``make
sample PRIMER=``) starts every sample with a primer: a MIDI/MusicXML/ABC file or melody events
(`muselab.primer`). Each sample is written as ``sample_NN.mid`` with its piano-roll
``sample_NN.png`` and its audio ``sample_NN.wav`` beside it (``render=false``: MIDI only).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import lightning as L

from lightning_modules.base import load_model
from muselab.cli import command_arguments
from muselab.errors import report_user_errors
from muselab.music.evaluation import n_notes, write_midi, write_pieces
from muselab.primer import load_primer

log = logging.getLogger("muselab.sample")


def sample(
    ckpt: str,
    n: int = 4,
    out: str = "samples",
    length: int | None = None,
    temperature: float = 1.0,
    prompt: str | None = None,
    seed: int = 0,
    render: bool = True,
    audio_backend: str = "auto",
    options: dict[str, Any] | None = None,
) -> list[Path]:
    """Load any MuseLab checkpoint, generate ``n`` pieces and write them as ``.mid`` files.

    With ``render`` each MIDI file gets a piano-roll PNG and a WAV beside it. Returns the MIDI paths.
    """
    L.seed_everything(seed, verbose=False)
    model = load_model(ckpt)
    if not all(bool(p.isfinite().all()) for p in model.parameters()):
        log.warning(
            "%s: the weights are not finite (the run diverged): the samples will be noise or silence", ckpt
        )
    primer = load_primer(prompt) if prompt else None
    musics = model.sample(n, length, temperature, primer, **(options or {}))
    if render:
        paths = [f["midi"] for f in write_pieces(musics, Path(out), "sample", None, True, audio_backend)]
    else:
        paths = write_midi(musics, Path(out))
    for path, music in zip(paths, musics):
        log.info("%s: %d tracks, %d notes", path, len(music.tracks), n_notes(music))
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with report_user_errors("muselab.sample"):
        args = command_arguments("sample", sys.argv[1:] if argv is None else argv)
        paths = sample(**args)
    extra = " (+ PNG and WAV each)" if args["render"] else ""
    print(f"wrote {len(paths)} MIDI files{extra} to {args['out']}")


if __name__ == "__main__":
    main()
