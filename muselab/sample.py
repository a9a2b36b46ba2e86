"""Write N samples from a checkpoint: ``python -m muselab.sample ckpt=PATH n=4 out=samples``.

Each sample is written as ``sample_NN.mid`` with its piano-roll ``sample_NN.png`` and its audio
``sample_NN.wav`` beside it (``render=false`` writes the MIDI files only).

Arguments (``key=value``): ``ckpt`` (required), ``n`` (4), ``out`` (samples), ``steps`` (0: 16
bars), ``temperature`` (1.0), ``seed`` (0), ``render`` (true), ``audio_backend`` (auto: fluidsynth
when installed, else a built-in synthesizer; see `callbacks.rendering`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning as L

from lightning_modules.base import load_model
from muselab.utils import parse_kv_args, write_midi

log = logging.getLogger("muselab.sample")
DEFAULTS = {
    "ckpt": "",
    "n": 4,
    "out": "samples",
    "steps": 0,
    "temperature": 1.0,
    "seed": 0,
    "render": True,
    "audio_backend": "auto",
}


def sample(
    ckpt: str,
    n: int = 4,
    out: str = "samples",
    steps: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
    render: bool = True,
    audio_backend: str = "auto",
) -> list[Path]:
    """Load any MuseLab checkpoint, generate ``n`` pieces and write them as ``.mid`` files.

    With ``render`` each MIDI file gets a piano-roll PNG and a WAV beside it. Returns the MIDI paths.
    """
    L.seed_everything(seed, verbose=False)
    model = load_model(ckpt)
    musics = model.sample(n, steps or None, temperature)
    if render:
        from callbacks.sample_music import write_pieces

        paths = [f["midi"] for f in write_pieces(musics, Path(out), "sample", None, True, audio_backend)]
    else:
        paths = write_midi(musics, Path(out))
    for path, music in zip(paths, musics):
        notes = sum(len(t.notes) for t in music.tracks)
        log.info("%s: %d tracks, %d notes", path, len(music.tracks), notes)
    return paths


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_kv_args(sys.argv[1:] if argv is None else argv, DEFAULTS)
    if not args["ckpt"]:
        raise SystemExit(
            "usage: python -m muselab.sample ckpt=PATH [n=4] [out=samples] [steps=..] [temperature=..] "
            "[render=true] [audio_backend=auto]"
        )
    paths = sample(**args)
    extra = " (+ PNG and WAV each)" if args["render"] else ""
    print(f"wrote {len(paths)} MIDI files{extra} to {args['out']}")


if __name__ == "__main__":
    main()
