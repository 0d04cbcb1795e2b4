"""The layer every Hugging Face Trainer-based host shares (imports transformers-free core + torch;
the mixin is used with transformers Trainers)."""

from .trainer import SEGMENTS_KEY, ScaleDataError, ScaleTrainerHost, ScaleTrainerMixin

__all__ = ["SEGMENTS_KEY", "ScaleDataError", "ScaleTrainerHost", "ScaleTrainerMixin"]
