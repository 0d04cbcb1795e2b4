"""``ScaleAxolotlTrainer``: ``AxolotlTrainer`` whose loss is SCALe.

Everything Axolotl does around the loss keeps working: packing samplers and collators, its metrics
(``tokens/trainable``, ``ppl``, stored metrics) and logging, and the input fix-ups of
``AxolotlTrainer.compute_loss`` (Gemma token types, packed-mask removal). That ``compute_loss`` ends by
calling ``Trainer.compute_loss``; :class:`_ScaleLossBelowAxolotl` sits between ``AxolotlTrainer`` and
``Trainer`` in the method resolution order, so that final call computes SCALe instead of the model's
own loss. The counting over the optimizer step, the weights and the logging of the components come
from :class:`~scale_plugins.hf.ScaleTrainerMixin`, unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar

from axolotl.core.trainers.base import AxolotlTrainer
from transformers import Trainer

from ..core import ScaleConfigError, ScaleOptions
from ..hf import ScaleTrainerMixin
from .args import PROMPT_FIX


class _ScaleLossBelowAxolotl(Trainer):
    """Replaces ``Trainer.compute_loss`` for ``AxolotlTrainer.compute_loss``'s final ``super()`` call."""

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        return ScaleTrainerMixin.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)  # type: ignore[arg-type]


class ScaleAxolotlTrainer(ScaleTrainerMixin, AxolotlTrainer, _ScaleLossBelowAxolotl):
    """Takes what ``AxolotlTrainer`` takes, plus ``scale_options`` (default: the options bound by
    :meth:`with_options`, which is how :class:`~scale_plugins.axolotl.ScalePlugin` passes the YAML's)."""

    scale_bound_options: ClassVar[ScaleOptions | None] = None
    scale_prompt_fix = PROMPT_FIX

    @classmethod
    def with_options(cls, options: ScaleOptions) -> type[ScaleAxolotlTrainer]:
        """This class with ``options`` bound: Axolotl instantiates the trainer class itself."""
        return type(cls.__name__, (cls,), {"scale_bound_options": options, "__module__": cls.__module__})

    def __init__(self, *args: Any, scale_options: ScaleOptions | None = None, **kwargs: Any):
        if kwargs.get("compute_loss_func") is not None:
            raise ScaleConfigError("compute_loss_func: SCALe is the loss; do not pass another one (e.g. use_eaft)")
        options = scale_options or self.scale_bound_options
        if options is None:
            raise ScaleConfigError(
                "ScaleAxolotlTrainer needs its options: pass scale_options=ScaleOptions(...) or use "
                "ScaleAxolotlTrainer.with_options(options) (the plugin does this from the YAML)"
            )
        super().__init__(*args, **kwargs)
        if getattr(self.args, "orpo_alpha", None):
            raise ScaleConfigError("orpo_alpha: ORPO computes its own loss; it cannot be combined with SCALe")
        self.scale_setup(options, self.processing_class)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        # Axolotl's own compute_loss first (its input fix-ups and token counters), which then reaches
        # _ScaleLossBelowAxolotl.compute_loss, i.e. ScaleTrainerMixin.compute_loss.
        return AxolotlTrainer.compute_loss(
            self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
