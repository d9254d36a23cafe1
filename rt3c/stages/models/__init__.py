"""Model sources: the zoo, Hugging Face directories and user factories."""

from rt3c.stages.models.base import LoadedModel
from rt3c.stages.models.zoo import ZOO, load_model

__all__ = ["ZOO", "LoadedModel", "load_model"]
