"""``ScaleSeq2SeqTrainer``: LLaMA-Factory's ``CustomSeq2SeqTrainer`` with the SCALe loss.

All the loss logic is the shared :class:`~scale_plugins.hf.ScaleTrainerMixin` (segment counts over the whole
optimizer step, summed over ranks; per-token weights from the core; ``scale/*`` metrics). This module only
builds the trainer from LLaMA-Factory's arguments, and :func:`sft_trainer` is what ``run_sft`` calls once the
launcher has patched it in (:mod:`.patch`): the SCALe trainer when ``use_scale_loss`` is on, the stock one
otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
from llamafactory.extras import logging as lf_logging
from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer

from ..core import ScaleConfigError
from ..hf import ScaleTrainerMixin
from .hparams import SWITCH

logger = lf_logging.get_logger("llamafactory.scale_plugins")


class ScaleSeq2SeqTrainer(ScaleTrainerMixin, CustomSeq2SeqTrainer):
    """``CustomSeq2SeqTrainer`` whose training and evaluation loss is SCALe.

    Takes exactly what ``CustomSeq2SeqTrainer`` takes; ``finetuning_args`` must be a
    :class:`~scale_plugins.llamafactory.hparams.ScaleFinetuningArguments` with ``use_scale_loss: true``.
    """

    scale_prompt_fix = "set `train_on_prompt: false` (LLaMA-Factory's default), which masks every prompt"

    def __init__(self, finetuning_args: Any, *args: Any, **kwargs: Any):
        if not getattr(finetuning_args, SWITCH, False):
            raise ScaleConfigError(
                f"ScaleSeq2SeqTrainer needs ScaleFinetuningArguments with `{SWITCH}: true` "
                "(start training with `scale-llamafactory train`)"
            )
        options = finetuning_args.scale_options()
        super().__init__(finetuning_args, *args, **kwargs)
        if self.compute_loss_func is not None:  # one of LLaMA-Factory's own losses; the arguments refuse these
            raise ScaleConfigError("SCALe cannot be combined with another loss (use_dft_loss, use_asft_loss, ...)")
        self.scale_setup(options, self.processing_class)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        logger.info(f"SCALe loss active on rank {rank} of {self.args.world_size} ({type(self).__name__})")


def sft_trainer(finetuning_args: Any, *args: Any, **kwargs: Any) -> CustomSeq2SeqTrainer:
    """What ``llamafactory.train.sft.workflow.run_sft`` builds its trainer with, once patched."""
    cls = ScaleSeq2SeqTrainer if getattr(finetuning_args, SWITCH, False) else CustomSeq2SeqTrainer
    return cls(finetuning_args, *args, **kwargs)
