"""The speculative decoding engine: the public decoder, the one round and its two launchers,
the sampler and statistics (policies live in ``difftree_rt.policies``, below the engine)."""

from __future__ import annotations

from .decoder import GenerationOutput, SpeculativeDecoder
from .sampling import SamplingParams, choose, process_logits, request_seeds, target_probs
from .stats import PHASES, GenerationStats

__all__ = [
    "PHASES",
    "GenerationOutput",
    "GenerationStats",
    "SamplingParams",
    "SpeculativeDecoder",
    "choose",
    "process_logits",
    "request_seeds",
    "target_probs",
]
