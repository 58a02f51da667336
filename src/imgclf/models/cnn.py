"""The reference study's small networks, trained from scratch.

Both follow the Keras originals: 3x3 'valid' convolutions with ReLU and 2x2 max-pooling,
then a flattening dense head. The flattened size is worked out from the input size. On a
CPU each block's pooling, ReLU and dropout run as one kernel (``imgclf.models.fused``).
"""

from __future__ import annotations

import torch
from torch import nn

from imgclf.errors import ModelError
from imgclf.models import fused
from imgclf.models.registry import register_model


class Dropout(nn.Module):
    """Inverted dropout, as ``nn.Dropout`` and Keras' ``Dropout``, with a cheaper mask.

    PyTorch's CPU dropout draws one random number per value (``bernoulli_``), which costs
    more than the convolutions it sits between. This one draws 64 random bits at a time
    and keeps a value when its byte is at least ``round(p * 256)``: the dropped fraction
    is ``p`` rounded to a multiple of 1/256 (0.3 becomes 0.3008) and kept values are
    scaled by 1 / (1 - that fraction), so the expected output is still the input. Under
    ``torch.compile`` it is ``nn.functional.dropout`` with ``p`` itself.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = min(round(p * 256), 255)
        self.scale = 256 / (256 - self.threshold)

    @property
    def active(self) -> bool:
        return self.training and self.threshold > 0

    def noise(self, count: int, device: torch.device) -> torch.Tensor:
        """``count`` random bytes; a value is kept where its byte is at least threshold."""
        words = torch.empty((count + 7) // 8, dtype=torch.int64, device=device)
        return words.random_(-2**63, None).view(torch.uint8)[:count]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        if torch.compiler.is_compiling():
            # Compiled, PyTorch's own dropout, which inductor generates itself: the mask
            # below views a bool as uint8, which inductor cannot lower for CUDA.
            return nn.functional.dropout(x, self.p, training=True)
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        noise = self.noise(x.numel(), x.device)
        keep = noise.as_strided(x.shape, x.stride()) >= self.threshold  # in x's layout
        # The mask in x's dtype: the multiply and its backward then stay in one dtype, which
        # PyTorch vectorises (bool times bf16 runs 3x slower). The bool is cast through
        # uint8 for the same reason. The scale is applied apart, as a float: in the mask it
        # would be rounded to x's dtype (1/0.6992 is 1.4297 in bf16).
        return (x * keep.view(torch.uint8).to(x.dtype)).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SmallCNN(nn.Sequential):
    """``nn.Sequential`` whose ``MaxPool2d(2), ReLU[, Dropout]`` runs are one fused kernel.

    Fused where ``fused.supports`` the input (eager, on a CPU), with the same result and
    the same random numbers drawn; the modules, and so the weights' names, are those of
    the plain sequence, which runs everywhere else (CUDA, export, ``torch.compile``). In
    float32 training the first convolution joins its block's kernel too
    (``fused.supports_conv``): its weight gradients come from the pooled gradient.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        modules, i = list(self), 0
        while i < len(modules):
            conv = modules[i] if fused.supports_conv(x, modules[i]) else None
            first = i if conv is None else i + 1
            taken = _fusable(modules, first)
            if taken and (conv is not None or fused.supports(x)):
                x = _run_fused(x, conv, modules[first + 2] if taken == 3 else None)
                i = first + taken
            else:
                x = modules[i](x)
                i += 1
        return x


def _run_fused(x: torch.Tensor, conv: nn.Conv2d | None, drop: Dropout | None) -> torch.Tensor:
    """``[conv,] MaxPool2d(2), ReLU[, drop]`` on x as one fused kernel (``imgclf.models.fused``)."""
    n, c, h, w = x.shape
    if conv is not None:
        c, h, w = conv.out_channels, h - 2, w - 2
    dropout = ()
    if drop is not None and drop.active:
        noise = drop.noise(n * c * (h // 2) * (w // 2), x.device)
        dropout = (noise, drop.threshold, drop.scale)
    if conv is not None:
        return fused.conv_pool_relu_dropout(x, conv, *dropout)
    return fused.pool_relu_dropout(x, *dropout)


def _fusable(modules: list[nn.Module], i: int) -> int:
    """How many modules from i make ``MaxPool2d(2), ReLU[, Dropout]``: 3, 2, or 0."""
    pool = modules[i] if i < len(modules) else None
    if not (isinstance(pool, nn.MaxPool2d) and i + 1 < len(modules)
            and isinstance(modules[i + 1], nn.ReLU)
            and (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
            in ((2, 2, 0, 1, False), ((2, 2), (2, 2), 0, 1, False))):
        return 0
    return 3 if i + 2 < len(modules) and isinstance(modules[i + 2], Dropout) else 2


def _conv_block(c_in: int, c_out: int, dropout: float) -> list[nn.Module]:
    # Keras' order is conv, ReLU, pool; max-pooling commutes with ReLU, and pooling first
    # runs the ReLU (and its backward) on a quarter of the values: same function, faster.
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3), nn.MaxPool2d(2), nn.ReLU(inplace=True)]
    if dropout:
        layers.append(Dropout(dropout))
    return layers


def _flat_size(img_size: int, channels: int, blocks: int = 3) -> int:
    side = img_size
    for _ in range(blocks):
        side = (side - 2) // 2
    if side < 1:
        raise ModelError(f"image size {img_size} is too small for the small CNNs' {blocks} "
                         "convolution blocks: choose --img-size 22 or more.")
    return channels * side * side


@register_model("small_cnn", "reference scratch CNN: 3x[conv32 3x3, ReLU, maxpool], dense 128",
                default_size=150)
def small_cnn(num_classes: int, img_size: int = 150) -> nn.Module:
    return SmallCNN(
        *_conv_block(3, 32, 0.5),
        *_conv_block(32, 32, 0.3),
        *_conv_block(32, 32, 0.0),
        nn.Flatten(),
        nn.Linear(_flat_size(img_size, 32), 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )


@register_model("small_cnn_wide",
                "reference augmentation CNN: conv 64/128/128 3x3, ReLU, maxpool, dense 512",
                default_size=150)
def small_cnn_wide(num_classes: int, img_size: int = 150) -> nn.Module:
    return SmallCNN(
        *_conv_block(3, 64, 0.5),
        *_conv_block(64, 128, 0.3),
        *_conv_block(128, 128, 0.0),
        nn.Flatten(),
        Dropout(0.5),
        nn.Linear(_flat_size(img_size, 128), 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, num_classes),
    )
