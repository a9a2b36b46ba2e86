"""Write N MIDI files from a checkpoint: ``python -m muselab.sample ckpt=PATH n=4 out=samples``.

Arguments (``key=value``): ``ckpt`` (required), ``n`` (4), ``out`` (samples), ``steps`` (0: 16
bars), ``temperature`` (1.0), ``seed`` (0).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import lightning as L

from lightning_modules.base import load_model
from muselab.utils import parse_kv_args, write_midi

log = logging.getLogger("muselab.sample")
DEFAULTS = {"ckpt": "", "n": 4, "out": "samples", "steps": 0, "temperature": 1.0, "seed": 0}


def sample(
    ckpt: str, n: int = 4, out: str = "samples", steps: int = 0, temperature: float = 1.0, seed: int = 0
):
    """Load any MuseLab checkpoint, generate ``n`` pieces and write them as ``.mid`` files."""
    L.seed_everything(seed, verbose=False)
    model = load_model(ckpt)
    musics = model.sample(n, steps or None, temperature)
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
            "usage: python -m muselab.sample ckpt=PATH [n=4] [out=samples] [steps=..] [temperature=..]"
        )
    paths = sample(**args)
    print(f"wrote {len(paths)} MIDI files to {args['out']}")


if __name__ == "__main__":
    main()
