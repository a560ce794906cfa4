"""Loading the compiled core and handing tensors to it (DLPack + the current stream)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

try:
    from . import _C  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    _C = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


def ext() -> Any:
    """The compiled module ``difftree_rt._C``; a clear error when the build is missing."""
    if _C is None:
        raise ImportError(
            "difftree_rt._C (the compiled core) is not available: install the package with "
            "`pip install .` so the C++ core is built"
        ) from _IMPORT_ERROR
    return _C


def dl(t: Tensor) -> Any:
    """A DLPack capsule viewing ``t`` (no copy, no stream synchronisation)."""
    return torch.utils.dlpack.to_dlpack(t.detach())


def dl_opt(t: Tensor | None) -> Any:
    return None if t is None else dl(t)


def stream_of(t: Tensor) -> int:
    """The current torch stream of ``t``'s device as an integer handle (0 on the CPU)."""
    if t.is_cuda:
        return int(torch.cuda.current_stream(t.device).cuda_stream)
    return 0


def require_tensor(x: object, name: str) -> Tensor:
    """Type-level checks DLPack itself cannot express; everything else is the core's job."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: expected a cpu or cuda tensor, got device {x.device}")
    if x.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got layout {x.layout}")
    return x
