"""Running a PyTorch module by ONNX Runtime: torch's exporter, sessions on the CPU, and
``OnnxModule``, a module that runs its export.

Shared by ``imgclf.export`` (a run's model written to a file) and training, whose frozen
backbone computes its features through ``OnnxModule`` (about twice PyTorch's speed on a
CPU, BENCHMARKS.md).

ONNX goes through torch's TorchScript-based exporter (``dynamo=False``). The default
(torch.export-based) exporter needs the ``onnxscript`` package, which imgclf does not depend
on; the TorchScript-based one needs nothing more. torch has deprecated it, so every export
is checked numerically against PyTorch.

The input size is fixed per run, so timm's TF-"same" convolutions (tf_efficientnet_*),
which work out their padding from the input's shape on every call, are exported with that
padding fixed (``fixed_same_padding``): ONNX Runtime then folds it into the convolutions
instead of running separate, shape-computing padding steps between them.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport
from torch import nn

from imgclf.errors import ImgclfError, RunError
from imgclf.machine import available_cores
from imgclf.paths import first_line

# Opset 17 is read by every ONNX Runtime since 1.14 and by most other runtimes.
ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"
FEATURE_TOLERANCE = 1e-3  # an OnnxModule's max |difference|, over its largest |output|
# The check runs a batch size other than the one traced, so a batch size frozen into the
# graph fails the check instead of failing later at prediction time.
TRACE_BATCH = 2
CHECK_BATCH = 3


@contextlib.contextmanager
def quiet_torch_deprecations():
    """Hide torch's notices that the TorchScript-based tools are deprecated: a user of
    ``imgclf export`` cannot act on them, and the numerical check guards the result."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*legacy TorchScript-based ONNX export",
                                DeprecationWarning)
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        # Fixed padding is exported as a Pad whose amounts pass through a reversing Slice;
        # ONNX Runtime folds it all into the convolution, so the exporter's notice that it
        # could not fold the Slice itself says nothing useful.
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        yield


def random_images(batch: int, size: int, seed: int) -> torch.Tensor:
    """Whole-number pixel values in 0-255 as float32, like decoded images."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=generator).float()


def fixed_same_padding(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose TF-"same" convolutions pad by the amounts that inputs of
    ``example``'s size need, rather than working them out from each input's shape.

    timm's ``Conv2dSameExport`` does this: it fixes its padding on its first call, which
    here is a forward pass over ``example``. The outputs are the same for that input size.
    """
    model = copy.deepcopy(model)
    for name, conv in list(model.named_modules()):
        if type(conv) is Conv2dSame:
            fixed = Conv2dSameExport(conv.in_channels, conv.out_channels, conv.kernel_size,
                                     conv.stride, 0, conv.dilation, conv.groups,
                                     conv.bias is not None)
            fixed.load_state_dict(conv.state_dict())
            model.set_submodule(name, fixed)
    with torch.no_grad():
        model(example)
    return model


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path,
                output: str = OUTPUT_NAME) -> None:
    with quiet_torch_deprecations(), torch.no_grad():
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME], output_names=[output],
            dynamic_axes={INPUT_NAME: {0: "batch"}, output: {0: "batch"}},
            do_constant_folding=True,
        )


def onnx_session(path: Path, threads: int | None = None, fix: str = ""):
    """An ONNX Runtime session on the CPU for the model in ``path``. A file that ONNX Runtime
    cannot load (damaged, or not an ONNX model) raises RunError naming it, then ``fix``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImgclfError("ONNX Runtime is not installed; install it with "
                          "`pip install 'imgclf[onnx]'` (or `pip install onnxruntime`).") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's errors have no common type
        message = (f"ONNX Runtime cannot load {path}: it is damaged or not an ONNX model "
                   f"({first_line(exc)})")
        raise RunError(f"{message}; {fix}." if fix else f"{message}.") from exc


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class OnnxModule(nn.Module):
    """``module`` (images in, one tensor out) exported to ONNX and run by ONNX Runtime on the
    CPU, for inference loops that take a module: on a CPU it runs a timm backbone about
    twice as fast as PyTorch (BENCHMARKS.md). Inputs must be ``img_size`` square, in any
    batch size. The export is checked against ``module`` on random images first, and
    raises RunError when the outputs differ by more than ``FEATURE_TOLERANCE`` of their
    largest magnitude. Inference only: nothing flows back through it.
    """

    def __init__(self, module: nn.Module, img_size: int, threads: int | None = None):
        super().__init__()
        module = module.eval()
        example = random_images(TRACE_BATCH, img_size, seed=0)
        with tempfile.TemporaryDirectory(prefix="imgclf-onnx-") as folder:
            path = Path(folder) / "module.onnx"
            write_onnx(fixed_same_padding(module, example), example, path, FEATURES_NAME)
            self.session = onnx_session(path, threads)
        images = random_images(CHECK_BATCH, img_size, seed=1)
        with torch.no_grad():
            expected = module(images).float().numpy()
        got = self(images).numpy()
        scale = max(float(np.abs(expected).max()), 1.0)
        diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else np.nan
        if not diff <= FEATURE_TOLERANCE * scale:  # also catches NaN
            raise RunError(f"ONNX Runtime's outputs differ from PyTorch's by up to {diff:.3g} "
                           f"(allowed {FEATURE_TOLERANCE * scale:.3g}).")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.to(torch.float32, memory_format=torch.contiguous_format).numpy()
        return torch.from_numpy(self.session.run([FEATURES_NAME], {INPUT_NAME: images})[0])
