"""Tiny random targets of the attention-variant families (fp32, CPU) and their drafters.

Vocabulary: V vocab, W sliding window, D head size.

- ``gptoss``: ``GptOssForCausalLM``, sliding window W on alternate layers, attention sinks
  (random, not zero: zero-initialised sinks would hide a missing sink term).
- ``gemma4``: ``Gemma4ForCausalLM`` (``Gemma4TextConfig``), sliding and full layers of
  different head sizes (D = 16 / 32, read through ``per_layer_config``), the last two layers
  reuse earlier layers' K/V (``num_kv_shared_layers``).
- ``gemma4_keqv``: the same with ``attention_k_eq_v`` (full layers: V is K, one global KV head).
- ``deepseek``: ``DeepseekV3ForCausalLM``, multi-head latent attention (cached latent of
  ``kv_lora_rank`` + the shared rotary key; K head 24 != V head 12), a dense then MoE layers.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from transformers import PreTrainedModel

import difftree_rt.models.target as target_module
from difftree_rt.models import DFlashDrafter

FAMILIES = ("gptoss", "gemma4", "gemma4_keqv", "deepseek")
WINDOWED = ("gptoss", "gemma4", "gemma4_keqv")
WINDOW = 8
VOCAB = 128
# Prefill chunk that makes windowed layers keep rings (W - 1 + max(N, chunk) rows << S_max).
RING_CHUNK = 4

_COMMON = dict(
    vocab_size=VOCAB,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
    tie_word_embeddings=False,
    # A wide init spreads the logits so fp32 argmax ties do not occur.
    initializer_range=0.25,
)


def make_variant_target(
    family: str, seed: int = 0, vocab: int = VOCAB, init: float = 0.25
) -> PreTrainedModel:
    """A tiny random fp32 target of ``family`` (see the module docstring); ``init`` is the
    initializer range (small: a flatter distribution, for sampling tests)."""
    from transformers import (
        DeepseekV3Config,
        DeepseekV3ForCausalLM,
        Gemma4ForCausalLM,
        Gemma4TextConfig,
        GptOssConfig,
        GptOssForCausalLM,
    )

    common = dict(_COMMON, vocab_size=vocab, initializer_range=init)
    torch.manual_seed(seed)
    if family == "gptoss":
        cfg = GptOssConfig(
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=WINDOW,
            num_local_experts=4,
            num_experts_per_tok=2,
            **common,
        )
        assert cfg.layer_types == ["sliding_attention", "full_attention"] * 2
        model: PreTrainedModel = GptOssForCausalLM(cfg)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.sinks.normal_(0, 1)
    elif family in ("gemma4", "gemma4_keqv"):
        extra = {}
        if family == "gemma4_keqv":
            extra = dict(attention_k_eq_v=True, num_global_key_value_heads=1)
        cfg = Gemma4TextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            global_head_dim=32,
            sliding_window=WINDOW,
            num_kv_shared_layers=2,
            layer_types=["sliding_attention", "full_attention"] * 3,
            hidden_size_per_layer_input=16,
            vocab_size_per_layer_input=vocab,
            **extra,
            **common,
        )
        model = Gemma4ForCausalLM(cfg)
    elif family == "deepseek":
        cfg = DeepseekV3Config(
            hidden_size=64,
            intermediate_size=128,
            moe_intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            kv_lora_rank=16,
            q_lora_rank=24,
            qk_rope_head_dim=8,
            qk_nope_head_dim=16,
            v_head_dim=12,
            n_routed_experts=4,
            num_experts_per_tok=2,
            first_k_dense_replace=1,
            n_group=2,
            topk_group=1,
            **common,
        )
        model = DeepseekV3ForCausalLM(cfg)
    else:
        raise AssertionError(family)
    return model.float().eval()


@functools.cache
def variant_pair(family: str) -> tuple[PreTrainedModel, DFlashDrafter]:
    """A random target of ``family`` (V=128) and a random drafter (block 8), built once (engine
    tests only)."""
    from engine_helpers import make_drafter  # tests/engine on sys.path (its conftest)

    target = make_variant_target(family)
    return target, make_drafter(target)


@contextlib.contextmanager
def prefill_chunk(rows: int) -> Iterator[None]:
    """Adapters built inside use ``rows`` as :data:`PREFILL_CHUNK` (small: windowed layers keep
    rings of W - 1 + max(N, rows) rows instead of S_max)."""
    previous = target_module.PREFILL_CHUNK
    target_module.PREFILL_CHUNK = rows
    try:
        yield
    finally:
        target_module.PREFILL_CHUNK = previous
