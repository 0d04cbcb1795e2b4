"""``ScaleSFTConfig``: TRL's ``SFTConfig`` plus the SCALe options, derived from the core's one definition."""

from __future__ import annotations

import dataclasses
from typing import Any

from trl import SFTConfig

from ..core import ScaleConfigError, ScaleOptions, option_fields
from ..hf.fields import PREFIX, argument_fields

# TRL's plain negative log-likelihood under its names across versions ("chunked_nll": TRL 1.9's default)
NLL_LOSS_TYPES = ("nll", "chunked_nll")


def _post_init(self: Any) -> None:
    SFTConfig.__post_init__(self)
    loss_type = getattr(self, "loss_type", "nll")
    if loss_type == "chunked_nll":
        # TRL 1.9's default: the same NLL through a patched forward that returns no logits. SCALe computes the
        # loss itself (its own chunked CE over the logits on such versions), so TRL's variant is not used.
        self.loss_type = "nll"
    elif loss_type != "nll":
        raise ScaleConfigError(f"loss_type: SCALe replaces the SFT loss and needs loss_type='nll', got {loss_type!r}")
    if getattr(self, "label_smoothing_factor", 0.0):
        raise ScaleConfigError("label_smoothing_factor: label smoothing cannot be combined with SCALe; set it to 0")
    self.scale_options()  # validate at config time, naming the key


def _scale_options(self: Any) -> ScaleOptions:
    """The SCALe options of this config as the core's :class:`ScaleOptions`."""
    values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.startswith(PREFIX)}
    return ScaleOptions.from_dict(values, prefix=PREFIX)


ScaleSFTConfig = dataclasses.make_dataclass(
    "ScaleSFTConfig",
    argument_fields(PREFIX),
    bases=(SFTConfig,),
    namespace={"__post_init__": _post_init, "scale_options": _scale_options, "__module__": __name__},
)
ScaleSFTConfig.__doc__ = (
    "TRL ``SFTConfig`` with the SCALe options, each prefixed ``scale_``.\n\nParameters (in addition to SFTConfig's):\n"
    + "\n".join(f"    {PREFIX}{o.name} (default {o.default!r}): {o.help}" for o in option_fields())
)
