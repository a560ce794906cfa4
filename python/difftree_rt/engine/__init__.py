"""The speculative decoding engine: decoder, selection policies, sampling and statistics."""

from __future__ import annotations

from .decoder import GenerationOutput, SpeculativeDecoder
from .policies import (
    POLICIES,
    ChainPolicy,
    DDTreePolicy,
    DraftPolicy,
    PolicyInput,
    make_policy,
    register_policy,
)
from .sampling import (
    SamplingParams,
    choose_tokens,
    counter_uniform,
    process_logits,
    request_seeds,
    target_probs,
)
from .stats import PHASES, GenerationStats

__all__ = [
    "PHASES",
    "POLICIES",
    "ChainPolicy",
    "DDTreePolicy",
    "DraftPolicy",
    "GenerationOutput",
    "GenerationStats",
    "PolicyInput",
    "SamplingParams",
    "SpeculativeDecoder",
    "choose_tokens",
    "counter_uniform",
    "make_policy",
    "process_logits",
    "register_policy",
    "request_seeds",
    "target_probs",
]
