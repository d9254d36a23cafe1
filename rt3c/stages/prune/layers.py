"""Which linear layers `rt3c prune` and `rt3c search` train: the weights of a model's Transformer blocks,
chosen by a regular expression over torch parameter names."""

from __future__ import annotations

import re

import torch

from rt3c.core.errors import SettingError, UserError
from rt3c.core.plan_limits import check_tile_fits
from rt3c.stages.models.base import LoadedModel

# The encoder's linear layers: HF BERT-style `...encoder.layer.N...` and rt3-lm's `layers.N...`.
DEFAULT_LAYERS = r"(^|\.)(encoder\.layer|layers|transformer\.layer|albert_layers)\.\d+\..*\.weight$"
"""The linear layers inside the Transformer blocks: BERT, RoBERTa, ELECTRA (`encoder.layer.N`), rt3-lm
(`layers.N`), DistilBERT (`transformer.layer.N`) and ALBERT (`albert_layers.N`, shared by its layers)."""


def select_layers(model: LoadedModel, pattern: str, tile: tuple[int, int]) -> dict[str, torch.nn.Parameter]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise SettingError("layers", f"not a regular expression ({exc})", repr(pattern)) from None
    linear_weights = {
        f"{name}.weight" if name else "weight": module.weight
        for name, module in model.module.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    chosen = {name: weight for name, weight in linear_weights.items() if regex.search(name)}
    if not chosen and any(type(module).__name__ == "Conv1D" for module in model.module.modules()):
        # GPT-2's projections keep their weight as [in, out]; training masks them is not written yet.
        raise UserError(
            f"{model.name}: its projections are Conv1D modules (GPT-2), which prune does not train; plan "
            "the exported model one-shot with `rt3c plan`"
        )
    if not chosen:
        raise SettingError("layers", f"matches no linear layer weight of {model.name}", repr(pattern))
    check_tile_fits(tile, {name: weight.shape for name, weight in chosen.items()})
    return chosen
