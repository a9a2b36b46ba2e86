"""MuseLab models: one LightningModule family per file, the bases beside them, shared pieces in `layers/`."""

from lightning_modules.base import CheckpointError, GenerativeModule, PromptNotSupported, load_model
from lightning_modules.frame import PianoRollModule
from lightning_modules.token import TokenModule

__all__ = [
    "CheckpointError",
    "GenerativeModule",
    "PianoRollModule",
    "PromptNotSupported",
    "TokenModule",
    "load_model",
]
