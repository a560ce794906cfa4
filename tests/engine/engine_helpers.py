"""Tiny models for the engine tests: random HF targets of four architectures and DFlash drafters.

Vocabulary: B batch, T sequence length, S block size, m anchors (blocks) per sequence, V vocab,
F feature width.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from difftree_rt.models import DFlashDrafter
from difftree_rt.models.dflash import extract_features

ARCHS = ("qwen3", "llama", "qwen2", "mistral")


def make_target(
    arch: str,
    vocab: int = 128,
    seed: int = 0,
    init: float = 0.25,
    layers: int = 2,
) -> PreTrainedModel:
    """A tiny random fp32 causal LM (hidden 64, ``layers`` layers, GQA 4/2).

    A wide init spreads the logits so fp32 argmax ties (which would make greedy comparisons
    meaningless) do not occur.
    """
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=init,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "qwen3":
        model: PreTrainedModel = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(sliding_window=None, **common))
    else:
        raise AssertionError(arch)
    return model.eval()


def make_drafter(target: PreTrainedModel, block_size: int = 8, seed: int = 0) -> DFlashDrafter:
    gen = torch.Generator().manual_seed(seed)
    return DFlashDrafter.for_target(target, num_layers=1, block_size=block_size, generator=gen)


@torch.no_grad()
def greedy_reference(model: PreTrainedModel, prompt: torch.Tensor, new: int, **kw) -> torch.Tensor:
    """HF greedy decoding: the lossless reference."""
    return model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
        **kw,
    )


def train_drafter(
    target: PreTrainedModel,
    drafter: DFlashDrafter,
    steps: int = 200,
    num_seqs: int = 32,
    seq_len: int = 48,
    anchors: int = 6,
    lr: float = 3e-3,
    seed: int = 0,
) -> DFlashDrafter:
    """Train ``drafter`` on the target's own greedy continuations (ALGORITHMS.md §1, training).

    Each block = [token at anchor a, MASK x (S-1)] at positions a..a+S-1 sees the target
    features of rows [0, a) and itself; loss = CE at slots k = 1..S-1 against token a+k,
    weighted by exp(-(k-1)/γ). The target stays frozen.
    """
    gen = torch.Generator().manual_seed(seed)
    s_len = drafter.block_size
    prompts = torch.randint(0, target.config.vocab_size, (num_seqs, 4), generator=gen)
    seqs = greedy_reference(target, prompts, seq_len - 4)
    with torch.no_grad():
        out = target(seqs, output_hidden_states=True)
        feats = extract_features(out.hidden_states, drafter.config.target_layer_ids)
    t_len = seqs.shape[1]
    gamma = 7.0 if s_len >= 16 else max(1.0, (s_len - 1) / 2)
    weights = torch.exp(-torch.arange(s_len - 1, dtype=torch.float32) / gamma)
    weights = weights / weights.sum()
    block_of = torch.arange(anchors * s_len) // s_len  # [m*S] block index of each query row
    opt = torch.optim.Adam(drafter.parameters(), lr=lr)
    drafter.train()
    for _ in range(steps):
        idx = torch.randint(0, num_seqs, (8,), generator=gen)
        x, f = seqs[idx], feats[idx]
        a = torch.randint(1, t_len - s_len + 1, (8, anchors), generator=gen)  # [B, m]
        offs = torch.arange(s_len)
        pos = (a[:, :, None] + offs).reshape(8, -1)  # [B, m*S]
        block = torch.full((8, anchors, s_len), drafter.mask_token_id)
        block[:, :, 0] = torch.gather(x, 1, a)
        ctx_vis = torch.arange(t_len)[None, None, :] < a.repeat_interleave(s_len, 1)[:, :, None]
        blk_vis = (block_of[:, None] == block_of[None, :]).expand(8, -1, -1)
        mask = torch.cat([ctx_vis, blk_vis], dim=2)
        hidden = drafter(block.reshape(8, -1), f, pos, attention_mask=mask)
        logits = drafter.compute_logits(hidden).reshape(8, anchors, s_len, -1)[:, :, 1:]
        labels = torch.gather(x, 1, pos.clamp(max=t_len - 1)).reshape(8, anchors, s_len)[:, :, 1:]
        ce = F.cross_entropy(logits.flatten(0, 2), labels.flatten(), reduction="none")
        loss = (ce.reshape(8, anchors, s_len - 1) * weights).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    drafter.eval()
    return drafter


def chi2_sf(stat: float, dof: int) -> float:
    """Survival function of the chi-square distribution (scipy when installed)."""
    try:
        from scipy.stats import chi2

        return float(chi2.sf(stat, dof))
    except ImportError:  # regularised upper incomplete gamma by series / continued fraction
        return _gammaincc(dof / 2.0, stat / 2.0)


def _gammaincc(a: float, x: float) -> float:
    if x <= 0:
        return 1.0
    if x < a + 1:
        term = total = 1.0 / a
        n = a
        for _ in range(1000):
            n += 1
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return 1.0 - total * math.exp(-x + a * math.log(x) - math.lgamma(a))
    b, c, d = x + 1 - a, 1e300, 1.0 / (x + 1 - a)
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


@functools.cache
def random_pair(arch: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A random target (V=128) and a random drafter (block 8) for ``arch``."""
    target = make_target(arch)
    return target, make_drafter(target)


@functools.cache
def trained_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A small-vocabulary target (V=32) and a drafter trained on its greedy continuations, so
    acceptance is realistic (τ well above 1, full-depth paths happen)."""
    with torch.random.fork_rng():
        target = make_target("qwen3", vocab=32, seed=1)
        drafter = make_drafter(target, seed=1)
        train_drafter(target, drafter, steps=400, num_seqs=128, lr=1e-2)
    return target, drafter
