"""difftree_rt: lossless speculative decoding with block-diffusion drafters and draft trees.

Submodules are imported lazily so that pure-Python parts (models, reference) import without the
compiled extension and ``import difftree_rt`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ops": "difftree_rt.ops",
    "reference": "difftree_rt.reference",
    "models": "difftree_rt.models",
    "DraftTree": "difftree_rt.tree",
    "build_info": "difftree_rt.info",
    "SpeculativeDecoder": "difftree_rt.engine.decoder",
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'difftree_rt' has no attribute {name!r}")
    module = importlib.import_module(target)
    value = module if target.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value


__all__ = [*_LAZY, "__version__"]
