"""TRL adapter: ``ScaleSFTTrainer`` / ``ScaleSFTConfig`` (drop-in for ``SFTTrainer`` / ``SFTConfig``)."""

from .config import ScaleSFTConfig
from .trainer import ScaleSFTTrainer

__all__ = ["ScaleSFTConfig", "ScaleSFTTrainer"]
