"""Loading the compiled core and handing tensors to it (DLPack + the current stream)."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import torch
from torch import Tensor


def _load() -> Any:
    # DIFFTREE_RT_EXT=/path/to/_C*.so runs the package against another build of the core (e.g.
    # the sanitizer build in scripts/test.sh); normally the installed extension is used.
    path = os.environ.get("DIFFTREE_RT_EXT")
    if not path:
        from . import _C as module  # type: ignore[attr-defined]

        return module
    spec = importlib.util.spec_from_file_location("difftree_rt._C", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"DIFFTREE_RT_EXT={path!r} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["difftree_rt._C"] = module
    return module


try:
    _C = _load()
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    _C = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


# The torch thread count last handed to the core's CPU thread cap (0: none yet).
_threads_set = 0


def ext() -> Any:
    """The compiled module ``difftree_rt._C``; a clear error when the build is missing.

    Every op gets the core through here, so this is where the core's CPU thread cap follows
    ``torch.get_num_threads()`` (only re-set when it changed)."""
    global _threads_set
    if _C is None:
        raise ImportError(
            "difftree_rt._C (the compiled core) is not available: install the package with "
            "`pip install .` so the C++ core is built"
        ) from _IMPORT_ERROR
    threads = torch.get_num_threads()
    if threads != _threads_set:
        _C.set_max_threads(threads)
        _threads_set = threads
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


def require_tensors(*, optional: tuple[str, ...] = (), **tensors: object) -> None:
    """:func:`require_tensor` on every keyword argument (its name is the message's name);
    the ones listed in ``optional`` may also be None."""
    for name, x in tensors.items():
        if x is None and name in optional:
            continue
        require_tensor(x, name)


def require_tensor(x: object, name: str) -> Tensor:
    """Type-level checks DLPack itself cannot express; everything else is the core's job."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: expected a cpu or cuda tensor, got device {x.device}")
    if x.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got layout {x.layout}")
    return x
