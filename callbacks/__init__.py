"""Lightning callbacks and evaluation metrics for MuseLab (sampling, rendering, music metrics)."""
