"""LLaMA-Factory adapter: SCALe in ``llamafactory-cli``'s training, as the ``scale-llamafactory`` command.

LLaMA-Factory has no plugin mechanism, so ``scale-llamafactory`` (:mod:`.cli`) patches it in every process it
starts (:mod:`.patch`) and then runs LLaMA-Factory's own launcher: same commands, same YAML, plus
``use_scale_loss: true`` and the ``scale_*`` keys (:mod:`.hparams`), and a loss selector in the web UI
(:mod:`.webui`). Supported: LLaMA-Factory 0.9.5 (``pip install 'scale-plugins[llamafactory]'``).

Importing this package imports nothing of LLaMA-Factory; the submodules do.
"""

from .patch import SUPPORTED_VERSION, UnsupportedLlamaFactoryError, apply_training_patches, apply_webui_patches

__all__ = ["SUPPORTED_VERSION", "UnsupportedLlamaFactoryError", "apply_training_patches", "apply_webui_patches"]
