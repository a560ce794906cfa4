"""``SpeculativeDecoder.generate(streamer=...)`` hands over exactly the emitted tokens."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from difftree_rt import SpeculativeDecoder
from difftree_rt.models import DFlashDrafter


@pytest.mark.parametrize("policy", ["ar", "chain", "ddtree"])
def test_streamer_matches_output(policy: str) -> None:
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, initializer_range=0.3,
        max_position_embeddings=256, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    target = Qwen3ForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    drafter = DFlashDrafter.for_target(target, block_size=4, generator=gen)
    got: list[int] = []
    dec = SpeculativeDecoder(target, drafter, policy, budget=8)
    prompt = torch.randint(0, 48, (1, 6))
    out = dec.generate(prompt, 17, streamer=got.extend)
    assert got == out.sequences[0, 6:].tolist()
    assert len(got) == 17
