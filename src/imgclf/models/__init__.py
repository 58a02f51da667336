"""Models: one registry of imgclf's own networks, timm backbones, offline ImageNet weights."""

from imgclf.models import cnn  # noqa: F401  (registers the small CNNs)
from imgclf.models.factory import create_model
from imgclf.models.registry import list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
