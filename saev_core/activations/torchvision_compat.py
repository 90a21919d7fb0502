"""Let the processors that need torchvision (Qwen2-VL, Qwen2.5-VL, SmolVLM, Pixtral, and every
"fast" image processor) load where torchvision's compiled ops do not match torch.

A CUDA build of torchvision beside a CPU-only torch (the only torchvision wheel some machines
have) fails on import with ``operator torchvision::nms does not exist``: its compiled library
did not load, so the Python side cannot attach fake kernels to ops that were never declared.
Image processors use none of those ops (they are detection kernels: nms, roi_align, ...), so
declaring the two schemas the import needs lets torchvision load with its transforms working.
The shim is applied only after a real import has failed that way; a matching torchvision (any
GPU box, or a CPU build) is imported untouched.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings

_shim = None  # the torch.library.Library holding the declared schemas must stay alive

# What torchvision's import registers fake kernels for before anything else (its nms ops).
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def ensure_torchvision() -> bool:
    """Import torchvision if it is installed, shimming a build whose ops do not match torch.
    Returns whether torchvision is importable; raises on any other import failure."""
    global _shim
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
        return True
    except RuntimeError as e:
        if "torchvision::nms" not in str(e) or _shim is not None:
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    _shim = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _shim.define(schema)
    import torchvision  # noqa: F401, F811

    warnings.warn(f"torchvision {torchvision.__version__} was built for another torch than {torch.__version__}: its image "
                  "transforms work, its detection ops (nms, roi_align) do not. Install the torchvision that matches torch "
                  "for those.", RuntimeWarning, stacklevel=2)
    return True
