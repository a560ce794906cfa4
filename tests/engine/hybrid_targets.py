"""Tiny random hybrid Gated-DeltaNet targets (fp32, CPU) and their drafters.

Vocabulary: V vocab, H_k / H_v linear key / value heads, D head size, K conv width.

- ``qwen3_next``: ``Qwen3NextForCausalLM``, fused ``in_proj_qkvz`` / ``in_proj_ba``, MoE MLPs
  with a shared expert, gated full attention on every 4th layer.
- ``qwen3_5``: ``Qwen3_5ForCausalLM`` (``Qwen3_5TextConfig``), split projections, dense MLPs,
  partial rotary (multimodal RoPE sections over text positions).
- ``qwen3_5_moe``: ``Qwen3_5MoeForCausalLM`` (``Qwen3_5MoeTextConfig``), split projections, MoE.

Every family has H_v = 2 H_k (grouped value heads), K = 4 and three linear layers per full one.
"""

from __future__ import annotations

import functools

import torch
from transformers import PreTrainedModel

from difftree_rt.models import DFlashDrafter

FAMILIES = ("qwen3_next", "qwen3_5", "qwen3_5_moe")
VOCAB = 128
LAYER_TYPES = ["linear_attention"] * 3 + ["full_attention"]

_COMMON = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=8,
    linear_conv_kernel_dim=4,
    layer_types=LAYER_TYPES,
    max_position_embeddings=1024,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
    tie_word_embeddings=False,
)


def make_hybrid_target(
    family: str, seed: int = 0, vocab: int = VOCAB, init: float = 0.25
) -> PreTrainedModel:
    """A tiny random fp32 hybrid target of ``family`` (see the module docstring); ``init`` is the
    initializer range (a wide one spreads the logits so fp32 argmax ties do not occur)."""
    from transformers import (
        Qwen3_5ForCausalLM,
        Qwen3_5MoeForCausalLM,
        Qwen3_5MoeTextConfig,
        Qwen3_5TextConfig,
        Qwen3NextConfig,
        Qwen3NextForCausalLM,
    )

    common = dict(_COMMON, vocab_size=vocab, initializer_range=init)
    moe = dict(
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
    )
    torch.manual_seed(seed)
    if family == "qwen3_next":
        cfg = Qwen3NextConfig(intermediate_size=128, decoder_sparse_step=1, **moe, **common)
        model: PreTrainedModel = Qwen3NextForCausalLM(cfg)
    elif family == "qwen3_5":
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(intermediate_size=128, **common))
    elif family == "qwen3_5_moe":
        model = Qwen3_5MoeForCausalLM(Qwen3_5MoeTextConfig(**moe, **common))
    else:
        raise AssertionError(family)
    model = model.float().eval()
    with torch.no_grad():
        # transformers initialises these norms to the identity (and dt_bias to ones); random
        # values make a wrong gate or norm visible.
        for layer in model.model.layers:
            lin = getattr(layer, "linear_attn", None)
            if lin is not None:
                lin.dt_bias.normal_(0, 1)
                lin.norm.weight.normal_(1, 0.2)
    return model


@functools.cache
def hybrid_pair(family: str) -> tuple[PreTrainedModel, DFlashDrafter]:
    """A random target of ``family`` (V=128) and a random drafter (block 8), built once."""
    from engine_helpers import make_drafter  # tests/engine on sys.path (its conftest)

    target = make_hybrid_target(family)
    return target, make_drafter(target)
