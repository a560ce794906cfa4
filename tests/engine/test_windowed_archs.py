"""Sliding-window layers of the older families (Mistral, Qwen2 with use_sliding_window, Gemma-3):
contexts longer than the window decode exactly like HF greedy, with the windowed layers on rings
(small prefill chunks so the rings wrap many times) and without."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import greedy_reference, make_drafter
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import difftree_rt.models.target as target_mod
from difftree_rt import SpeculativeDecoder

_COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
    tie_word_embeddings=False,
    initializer_range=0.25,
)

# name -> (model factory, windowed layers)
_ARCHS = {
    "mistral": (lambda: MistralForCausalLM(MistralConfig(sliding_window=8, **_COMMON)), 2),
    "qwen2": (
        lambda: Qwen2ForCausalLM(
            Qwen2Config(use_sliding_window=True, sliding_window=8, max_window_layers=1, **_COMMON)
        ),
        1,
    ),
    "gemma3": (
        lambda: Gemma3ForCausalLM(
            Gemma3TextConfig(
                head_dim=16,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                **_COMMON,
            )
        ),
        1,
    ),
}


def _model(name: str) -> PreTrainedModel:
    torch.manual_seed(0)
    return _ARCHS[name][0]().eval()


@pytest.mark.parametrize("chunk", [4, None], ids=["rings", "full"])
@pytest.mark.parametrize("name", list(_ARCHS))
def test_windowed_greedy_equals_hf(name: str, chunk: int | None, monkeypatch) -> None:
    if chunk is not None:
        monkeypatch.setattr(target_mod, "PREFILL_CHUNK", chunk)
    model = _model(name)
    drafter = make_drafter(model)
    for n in (1, 30):
        prompt = torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(n))
        ref = greedy_reference(model, prompt, 24)
        for policy, budget in (("ar", 1), ("chain", 1), ("ddtree", 5), ("ddtree", 33)):
            dec = SpeculativeDecoder(model, None if policy == "ar" else drafter, policy, budget)
            out = dec.generate(prompt, 24)
            assert torch.equal(out.sequences, ref), (name, n, policy, budget)
            rings = sum(dec._adapter_for(n + 24).cache.is_ring(i) for i in range(2))
            assert rings == (_ARCHS[name][1] if chunk is not None else 0)
