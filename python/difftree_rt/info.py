"""Build and runtime information: ``difftree_rt.build_info()`` / ``python -m difftree_rt info``."""

from __future__ import annotations

import platform
from typing import Any

from . import __version__


def build_info() -> dict[str, Any]:
    """What this installation contains.

    Keys: ``version``, ``cuda_compiled`` (CUDA kernels built in), ``cuda_architectures``,
    ``cuda_version`` (nvcc used for the kernels), ``compiler``, ``git_sha``, plus the runtime's
    ``torch`` version, ``torch_cuda_available``, ``python``, the registered ``policies`` and
    the ``graph_mode_policies`` (captured in CUDA graphs on a GPU by default).
    """
    from ._ext import ext

    info: dict[str, Any] = {"version": __version__}
    info.update(ext().build_info())
    info["version"] = __version__
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda_available"] = bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        info["torch"] = None
        info["torch_cuda_available"] = False
    info["python"] = platform.python_version()
    from .policies import POLICIES, make_policy

    info["policies"] = ", ".join(["ar", *sorted(POLICIES)])
    # Policies whose rounds graph mode captures on CUDA (by default); the others run eagerly.
    graph = [name for name in sorted(POLICIES) if make_policy(name, 8).needs.graph_safe]
    info["graph_mode_policies"] = ", ".join(["ar", *graph])
    return info
