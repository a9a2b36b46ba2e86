"""MuseLab models: one LightningModule family per file, shared pieces in `layers/`."""

from lightning_modules.base import GenerativeModule, PianoRollModule, load_model

__all__ = ["GenerativeModule", "PianoRollModule", "load_model"]
