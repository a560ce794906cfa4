"""Model code: the DFlash drafter and the Hugging Face target adapter."""

from __future__ import annotations

from .dflash import DFlashCache, DFlashDrafter, extract_features
from .dflash_config import DFlashConfig
from .static_cache import StaticKVCache
from .target import TargetAdapter, TargetOutput

__all__ = [
    "DFlashCache",
    "DFlashConfig",
    "DFlashDrafter",
    "StaticKVCache",
    "TargetAdapter",
    "TargetOutput",
    "extract_features",
]
