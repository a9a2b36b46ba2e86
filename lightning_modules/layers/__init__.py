"""Shared building blocks of MuseLab models (heads, conv stacks, attention, ...)."""

from lightning_modules.layers.heads import HEADS, BernoulliHead, FrameHead, build_head

__all__ = ["HEADS", "BernoulliHead", "FrameHead", "build_head"]
