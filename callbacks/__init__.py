"""Lightning callbacks for MuseLab: per-epoch samples, polyphonic NLL, checkpoints and training guards
(the metrics and rendering they use live in `muselab.music`)."""
