"""The lossless suite on a CUDA target (skipped without a GPU): every policy, eager and graph
mode, fp32 (exact vs HF greedy on the same device) and bf16 with head_dim 64 (the CUDA tree
attention kernel; equal to HF's own bf16 decode up to near-ties), sampling reproducible per seed.
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import greedy_reference, make_drafter, make_target
from test_greedy import assert_greedy_equal
from transformers import Qwen3Config, Qwen3ForCausalLM

from difftree_rt import SpeculativeDecoder
from difftree_rt.policies import D2SDPolicy

pytestmark = pytest.mark.cuda

POLICIES = ("chain", "ddtree", "caddtree", "presto", "taps", "d2sd")
# graph_safe policies: graph mode is their default on CUDA
GRAPH_POLICIES = ("chain", "ddtree", "caddtree", "taps", "d2sd", "presto")
BF16_TIE_ULPS = 4  # bf16 logits: a top-1/top-2 gap within a few bf16 ulps may round either way


def _prompts(vocab: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(0, vocab, (1, n), generator=gen).cuda() for n in (1, 9, 23)]


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("budget", [7, 64])
def test_fp32_greedy_every_policy_eager_and_graph(arch: str, budget: int) -> None:
    target = make_target(arch).cuda()
    drafter = make_drafter(target)
    prompts = _prompts(128)
    refs = [greedy_reference(target, p, 24) for p in prompts]
    runs = [(p, False) for p in POLICIES] + [(p, True) for p in GRAPH_POLICIES]
    for policy, graphs in runs:
        dec = SpeculativeDecoder(target, drafter, policy, budget=budget, cuda_graphs=graphs)
        for prompt, ref in zip(prompts, refs):
            out = dec.generate(prompt, 24)
            assert_greedy_equal(target, out.sequences, ref)
            assert sum(out.stats.emitted_per_round) + 1 == 24


def _bf16_target() -> torch.nn.Module:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        initializer_range=0.25,
        tie_word_embeddings=False,
    )
    return Qwen3ForCausalLM(config).eval().to(device="cuda", dtype=torch.bfloat16)


def _assert_bf16_equal(model: torch.nn.Module, got: torch.Tensor, ref: torch.Tensor) -> None:
    if torch.equal(got, ref):
        return
    assert got.shape == ref.shape
    k = int((got[0] != ref[0]).nonzero()[0])
    with torch.no_grad():
        top = model(ref[:, :k]).logits[0, -1].float().topk(2).values
    gap = float(top[0] - top[1])
    ulp = 2.0 ** (torch.frexp(top[0].abs()).exponent.item() - 8)  # bf16: 8 significant bits
    assert gap <= BF16_TIE_ULPS * ulp, f"diverged at {k} with a bf16 gap of {gap:.3g} (ulp {ulp})"


@pytest.mark.parametrize("policy", POLICIES)
def test_bf16_cuda_tree_attention_greedy(policy: str) -> None:
    target = _bf16_target()
    drafter = make_drafter(target, block_size=16)
    prompts = _prompts(512)
    refs = [greedy_reference(target, p, 48) for p in prompts]
    for graphs in (False, True) if policy in GRAPH_POLICIES else (False,):
        dec = SpeculativeDecoder(target, drafter, policy, budget=64, cuda_graphs=graphs)
        for prompt, ref in zip(prompts, refs):
            _assert_bf16_equal(target, dec.generate(prompt, 48).sequences, ref)


@pytest.mark.parametrize("policy", ["ddtree", "d2sd"])
def test_sampling_reproducible_per_seed(policy: str) -> None:
    target = make_target("qwen3").cuda()
    drafter = make_drafter(target)
    dec = SpeculativeDecoder(target, drafter, policy, budget=32)
    prompt = _prompts(128)[1]
    a = dec.generate(prompt, 32, temperature=0.8, top_p=0.9, seed=7).sequences
    b = dec.generate(prompt, 32, temperature=0.8, top_p=0.9, seed=7).sequences
    assert torch.equal(a, b)


def test_d2sd_with_vp_drafter_on_cuda() -> None:
    target = make_target("qwen3").cuda()
    drafter = make_drafter(target)
    vp = make_drafter(target, block_size=12, seed=5)
    prompts = _prompts(128)
    for prompt in prompts:
        ref = greedy_reference(target, prompt, 24)
        out = SpeculativeDecoder(target, drafter, D2SDPolicy(32, k=3, vp_drafter=vp)).generate(
            prompt, 24
        )
        assert_greedy_equal(target, out.sequences, ref)
