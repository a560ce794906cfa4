"""Targets whose tokens the engine cannot reproduce exactly are refused when the decoder (or a
TargetAdapter) is built, with a message naming the model type and what is unsupported; the
RoPE variants it does reproduce still decode exactly like HF. Tiny random models built from
transformers' config classes (no weights downloaded)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
)

from difftree_rt import SpeculativeDecoder
from difftree_rt.models import DFlashDrafter, TargetAdapter
from difftree_rt.models.dflash_config import DFlashConfig

SMALL: dict[str, Any] = dict(
    vocab_size=64,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


def _phi3_longrope() -> PreTrainedModel:
    rope = {
        "rope_type": "longrope",
        "short_factor": [1.0] * 8,
        "long_factor": [4.0] * 8,
        "original_max_position_embeddings": 32,
        "rope_theta": 10000.0,
    }
    cfg = Phi3Config(original_max_position_embeddings=32, rope_parameters=rope, **SMALL)
    return Phi3ForCausalLM(cfg).eval()


def _llama(rope: dict[str, Any] | None, legacy: bool = False) -> PreTrainedModel:
    key = "rope_scaling" if legacy else "rope_parameters"
    kwargs = {} if rope is None else {key: rope}
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(initializer_range=0.25, **kwargs, **SMALL)).eval()


def _gemma3_dynamic_full_layers() -> PreTrainedModel:
    rope = {
        "full_attention": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
    }
    cfg = Gemma3TextConfig(
        head_dim=16,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters=rope,
        **SMALL,
    )
    return Gemma3ForCausalLM(cfg).eval()


def _gemma2() -> PreTrainedModel:
    return Gemma2ForCausalLM(Gemma2Config(head_dim=16, sliding_window=512, **SMALL)).eval()


REFUSED = {
    "phi3-longrope": (_phi3_longrope, r"phi3.*rope_type='longrope'"),
    "llama-dynamic": (lambda: _llama({"rope_type": "dynamic", "factor": 2.0}), r"llama.*'dynamic'"),
    "llama-dynamic-legacy": (
        lambda: _llama({"type": "dynamic", "factor": 2.0}, legacy=True),
        r"llama.*'dynamic'",
    ),
    "gemma3-dynamic-full-layers": (_gemma3_dynamic_full_layers, r"gemma3_text.*'dynamic'"),
    "gemma2-softcap": (_gemma2, r"gemma2.*soft-capping"),
}


def _drafter_for(model: PreTrainedModel) -> DFlashDrafter:
    """A drafter of the target's geometry with plain RoPE (the drafter refuses the dynamic
    variants itself): the refusal under test must come from the target."""
    config = copy.deepcopy(model.config)
    config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    return DFlashDrafter(DFlashConfig.for_target_config(config, num_layers=1, block_size=4))


@pytest.mark.parametrize("name", list(REFUSED))
@pytest.mark.parametrize("policy", ["ar", "ddtree"])
def test_refused_at_construction(name: str, policy: str) -> None:
    build, match = REFUSED[name]
    model = build()
    drafter = _drafter_for(model) if policy != "ar" else None
    with pytest.raises(ValueError, match=match):
        SpeculativeDecoder(model, drafter, policy, budget=4)
    with pytest.raises(ValueError, match=match):
        TargetAdapter(model, max_length=64)


def test_refusal_explains_why() -> None:
    with pytest.raises(ValueError) as err:
        SpeculativeDecoder(_phi3_longrope(), None, "ar")
    assert "Phi3ForCausalLM" in str(err.value) and "sequence length" in str(err.value)


def test_gemma3_dynamic_rope_on_unused_layer_type_is_not_refused() -> None:
    """Per-layer-type RoPE: only the layer types the model has count."""
    model = _gemma3_dynamic_full_layers()
    model.config.layer_types = ["sliding_attention", "sliding_attention"]
    TargetAdapter(model, max_length=64)


@pytest.mark.parametrize(
    "rope",
    [None, {"rope_type": "linear", "factor": 2.0}, {"rope_type": "yarn", "factor": 2.0}],
    ids=["default", "linear", "yarn"],
)
@pytest.mark.parametrize("policy", ["ar", "ddtree"])
def test_static_rope_variants_still_decode_exactly(
    rope: dict[str, Any] | None, policy: str
) -> None:
    model = _llama(rope)
    drafter = None
    if policy != "ar":
        drafter = DFlashDrafter.for_target(
            model, num_layers=1, block_size=4, generator=torch.Generator().manual_seed(0)
        )
    dec = SpeculativeDecoder(model, drafter, policy, budget=6)
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    out = dec.generate(prompt, 40)
    ref = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False,
        pad_token_id=0,
    )  # fmt: skip
    assert torch.equal(out.sequences, ref)
