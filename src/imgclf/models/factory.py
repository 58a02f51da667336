"""Building a classifier: a body (imgclf CNN or timm backbone), a head, and its preprocessing.

Every model imgclf trains is a ``Classifier`` that takes uint8-range images (0-255, any
dtype) and normalises them itself with the mean and std its body was trained with, so the
same tensors feed training, evaluation, prediction and exported models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from timm.models import group_parameters
from torch import nn

from imgclf.config import CHOICES
from imgclf.errors import ModelError
from imgclf.models.registry import check_model_name, get_spec

HEADS = CHOICES["model.head"]


@dataclass(frozen=True)
class Preprocessing:
    """What an input image must look like for a model; travels inside every checkpoint."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(int(d["img_size"]), tuple(d["mean"]), tuple(d["std"]), d["interpolation"])


class Classifier(nn.Module):
    """``head(body(normalise(x)))`` for x in the 0-255 range, shape (B, 3, H, W)."""

    def __init__(self, body: nn.Module, head: nn.Module, prep: Preprocessing):
        super().__init__()
        self.body = body
        self.head = head
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(prep.std).view(1, 3, 1, 1) * 255.0)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        # In place on one float copy: the same values as (x - mean) / std, with one
        # image-sized tensor made instead of three (1-3% of a small CNN's training step).
        return x.to(torch.float32, copy=True).sub_(self.mean).div_(self.std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalise(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_head(kind: str, in_features: int, num_classes: int, dropout: float = 0.2) -> nn.Module:
    """The reference head (dense 1024, ReLU, dropout, dense) or a plain linear one."""
    if kind == "reference":
        return nn.Sequential(
            nn.Linear(in_features, 1024), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(1024, num_classes),
        )
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    raise ModelError(f"head {kind!r} is not known; choose one of {', '.join(HEADS)}.")


def create_model(
    name: str,
    num_classes: int,
    *,
    img_size: int | None = None,
    pretrained: bool = True,
    weights: str | None = None,
    head: str = "reference",
    dropout: float = 0.2,
    adapt: str | None = None,
) -> tuple[Classifier, Preprocessing, str]:
    """Build model ``name`` for ``num_classes``; returns (model, preprocessing, weight source).

    imgclf's own CNNs train from scratch; timm backbones get ImageNet weights (unless
    ``pretrained`` is False), their preprocessing from the weights' config, and a new head.
    A backbone rebuilt to load a checkpoint (``pretrained=False``) gets the layer change
    ``adapt`` that its weights needed (``imgclf.models.weights.ADAPTATIONS``).
    """
    if num_classes < 2:
        raise ModelError(f"num_classes must be at least 2, got {num_classes}.")
    check_model_name(name)
    spec = get_spec(name)
    if spec is not None:
        size = img_size or spec.default_size
        prep = Preprocessing(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")
        return Classifier(spec.builder(num_classes, size), nn.Identity(), prep), prep, "scratch"
    from imgclf.models.weights import create_backbone

    # Building the backbone draws random numbers only when its weights are not cached yet
    # (the converter builds a model of its own): the head must not depend on that.
    with torch.random.fork_rng(devices=[]):
        body, data_config, source = create_backbone(name, weights=weights,
                                                    pretrained=pretrained, adapt=adapt)
    size = img_size or int(data_config["input_size"][-1])
    if size < int(data_config["input_size"][-1]):
        _check_input_size(name, body, size)
    prep = Preprocessing(size, tuple(data_config["mean"]), tuple(data_config["std"]),
                         data_config.get("interpolation", "bicubic"))
    classifier = Classifier(body, make_head(head, body.num_features, num_classes, dropout), prep)
    return classifier, prep, source


def model_from_checkpoint(ckpt: dict) -> tuple[Classifier, Preprocessing]:
    """The model that a checkpoint's weights fit, built without loading any, and its
    preprocessing: as ``model_config`` and ``preprocessing`` say, with the layer change
    its backbone's weights needed (older checkpoints tell it by their weights' source)."""
    from imgclf.models.weights import adaptation

    cfg = ckpt["model_config"]
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    adapt = cfg["adapt"] if "adapt" in cfg else adaptation(cfg["name"],
                                                           ckpt.get("weights_source"))
    model, _, _ = create_model(cfg["name"], cfg["num_classes"], img_size=prep.img_size,
                               pretrained=False, head=cfg["head"], dropout=cfg["dropout"],
                               adapt=adapt)
    return model, prep


def _check_input_size(name: str, body: nn.Module, size: int) -> None:
    """Refuse an image size under the backbone's own that its convolutions and poolings
    cannot take, naming the smallest that runs: timm does not record it, so it is found by
    running the backbone on a blank image."""

    def runs(side: int) -> bool:
        training = body.training
        try:
            with torch.inference_mode():
                body.eval()(torch.zeros(1, 3, side, side))
            return True
        except RuntimeError:  # a kernel or pooling window larger than its input
            return False
        finally:
            body.train(training)

    if runs(size):
        return
    low, high = size, size * 2
    while not runs(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if runs(middle) else (middle, high)
    raise ModelError(f"image size {size} is too small for {name}: choose --img-size {high} "
                     "or more.")


def backbone_groups(model: Classifier) -> list[list[nn.Parameter]]:
    """The body's parameters grouped into stages, input side first (timm's coarse groups)."""
    body = model.body
    if not hasattr(body, "group_matcher"):
        return [list(body.parameters())]
    named = dict(body.named_parameters())
    groups = group_parameters(body, body.group_matcher(coarse=True))
    return [[named[n] for n in names] for names in groups.values() if names]


def set_trainable(model: Classifier, stages: int | str) -> list[nn.Parameter]:
    """Freeze the body except its last ``stages`` groups (``'all'`` unfreezes everything).

    Returns the body parameters left trainable. Frozen BatchNorm layers are kept in eval
    mode by the training loop (see ``freeze_norm_stats``).
    """
    groups = backbone_groups(model)
    if stages == "all":
        chosen = groups
    else:
        count = int(stages)
        if count < 0 or count > len(groups):
            raise ModelError(
                f"finetune stages must be between 0 and {len(groups)} or 'all', got {stages!r}."
            )
        chosen = groups[len(groups) - count:] if count else []
    for p in model.body.parameters():
        p.requires_grad_(False)
    trainable = [p for group in chosen for p in group]
    for p in trainable:
        p.requires_grad_(True)
    return trainable


def freeze_norm_stats(module: nn.Module, trainable_too: bool = False) -> None:
    """Put norm layers whose parameters are all frozen into eval mode (keep running stats);
    with ``trainable_too``, every norm layer (its scale and shift still train)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            params = list(m.parameters(recurse=False))
            if trainable_too or (params and not any(p.requires_grad for p in params)):
                m.eval()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
