"""Music in, figures and media out: metrics, memorisation, evaluation against real music, rendering.

Everything here works on decoded `muspy.Music`, so it measures and draws every model the same way.
Lightning callbacks (`callbacks/`) and the command-line tools call into this package.
"""

from muselab.music.evaluation import (
    MusicReference,
    decode_pieces,
    loss_gap,
    music_report,
    music_window,
    music_windows,
    n_bars,
    n_notes,
    write_midi,
    write_pieces,
)
from muselab.music.memorization import EVAL_STEPS_PER_BEAT, Memorization, MemorizationIndex, evaluation_roll
from muselab.music.metrics import (
    METRIC_NAMES,
    MusicMetrics,
    distribution_overlap,
    music_metrics,
    overlap_area,
)

__all__ = [
    "EVAL_STEPS_PER_BEAT",
    "METRIC_NAMES",
    "Memorization",
    "MemorizationIndex",
    "MusicMetrics",
    "MusicReference",
    "decode_pieces",
    "distribution_overlap",
    "evaluation_roll",
    "loss_gap",
    "music_metrics",
    "music_report",
    "music_window",
    "music_windows",
    "n_bars",
    "n_notes",
    "overlap_area",
    "write_midi",
    "write_pieces",
]
