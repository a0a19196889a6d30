"""What the embedder trainer asks of its components: loss sections with a framework-owned weight,
and the trainable-embedder contract (``interfaces.TrainableEmbedder``)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from pydantic import Field, model_validator

from ..config import ComponentConfig, ConfigError
from ..interfaces import Loss, LossInputs, TrainableEmbedder


class LossConfig(ComponentConfig):
    """A loss section: ``{name, weight, params}``; the total is ``sum_i weight_i * loss_i``.

    ``params.weight`` (plugin API 1, where each loss declared its own weight) is still accepted:
    it moves to ``weight`` with a FutureWarning.
    """

    weight: float = Field(1.0, ge=0, description="multiplier of this loss in the total")

    @model_validator(mode="before")
    @classmethod
    def _weight_from_params(cls, data):
        if not (isinstance(data, dict) and isinstance(data.get("params"), dict)
                and "weight" in data["params"]):
            return data
        params = dict(data["params"])
        weight = params.pop("weight")
        if "weight" in data:
            raise ValueError("weight is given twice, as weight and as params.weight "
                             "(deprecated): keep weight")
        warnings.warn(f"loss {data.get('name')!r}: params.weight is deprecated, write "
                      f"`weight: {weight}` beside name and params", FutureWarning, stacklevel=2)
        return {**data, "params": params, "weight": weight}


@dataclass(frozen=True)
class WeightedLoss:
    """A built loss with the weight of its config section."""

    loss: Loss
    weight: float

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        return self.loss(inputs)


def trainable_model(embedder, name: str) -> torch.nn.Module:
    """The ``nn.Module`` to train of a ``TrainableEmbedder``; an API-1 embedder with a duck-typed
    ``model`` and ``save`` still works, with a DeprecationWarning; anything else is a
    ConfigError."""
    model = getattr(embedder, "model", None)
    if not isinstance(model, torch.nn.Module) or not callable(getattr(embedder, "save", None)):
        raise ConfigError([(f"embedder.name: {name!r} is not trainable (it needs to implement "
                            "lrag_framework.interfaces.TrainableEmbedder: a `model` nn.Module "
                            "returning (reconstruction, embedding) and `save(folder)`)")])
    if not isinstance(embedder, TrainableEmbedder):
        warnings.warn(f"embedder {name!r} is trainable by duck typing (API 1): subclass "
                      "lrag_framework.interfaces.TrainableEmbedder", DeprecationWarning,
                      stacklevel=2)
    return model
