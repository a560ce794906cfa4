"""The DFlash drafter's layers: norms, rotary embedding, attention with its per-layer
visibility rule, MLP (ALGORITHMS.md §1; the drafter itself is :mod:`.dflash`).

Vocabulary: B batch, Q query rows, K key rows, T rows, H query heads, Hkv key/value heads,
D head dim, W sliding window.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .dflash_config import DFlashConfig

__all__ = ["DecoderLayer", "RMSNorm", "Rotary", "and_rule", "attend_rule"]


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, cast back before the weight (Qwen3 numerics)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class Rotary(nn.Module):
    """RoPE cos/sin tables at arbitrary absolute positions; frequencies kept in fp32."""

    inv_freq: torch.Tensor

    def __init__(self, config: DFlashConfig) -> None:
        super().__init__()
        inv_freq, self.attention_scaling = _rope_inv_freq(config)
        # A master copy outside the module's tensors: `.to(bfloat16)` would otherwise round
        # the frequencies, which shifts every rotated key.
        self._master = inv_freq
        self.register_buffer("inv_freq", inv_freq.clone(), persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> Rotary:
        super()._apply(fn, recurse)
        self.inv_freq = self._master.to(self.inv_freq.device)
        return self

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] (int) -> cos, sin [B, T, D] in ``dtype``."""
        freqs = positions[..., None].to(torch.float32) * self.inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def _rope_inv_freq(config: DFlashConfig) -> tuple[torch.Tensor, float]:
    dim = config.head_dim
    if config.rope_type == "default":
        exponent = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
        return 1.0 / (config.rope_theta**exponent), 1.0
    # Scaled RoPE variants (linear, llama3, yarn, ...): reuse transformers' tables so a drafter
    # for e.g. Llama 3.1 rotates exactly like the reference implementation.
    from transformers import Qwen3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if config.rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"unsupported rope_type {config.rope_type!r}")
    hf = Qwen3Config(
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters=dict(config.rope_parameters),
    )
    # Tables on the CPU even while modules are built on the meta device (checkpoint loading):
    # some initialisers (yarn) create tensors without a device.
    with torch.device("cpu"):
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[config.rope_type](hf, torch.device("cpu"))
    return inv_freq.to(torch.float32), float(scaling)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D], cos/sin [B, T, D] -> rotated x (rotate-half convention)."""
    cos = cos[:, None]
    sin = sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class _Attention(nn.Module):
    def __init__(self, config: DFlashConfig) -> None:
        super().__init__()
        h, hkv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        bias = config.attention_bias
        self.num_heads, self.num_kv_heads, self.head_dim = h, hkv, d
        self.q_proj = nn.Linear(config.hidden_size, h * d, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, hkv * d, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, hkv * d, bias=bias)
        self.o_proj = nn.Linear(h * d, config.hidden_size, bias=bias)
        self.q_norm = RMSNorm(d, config.rms_norm_eps)
        self.k_norm = RMSNorm(d, config.rms_norm_eps)

    def query(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, Q, hidden] -> q [B, H, Q, D] (q-norm, then RoPE)."""
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, self.num_heads, self.head_dim))
        return _rotate(q.transpose(1, 2), cos, sin)

    def key_value(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, hidden] -> k, v [B, Hkv, T, D] (k-norm, then RoPE on k)."""
        b, t, _ = x.shape
        k = self.k_norm(self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim))
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        return _rotate(k.transpose(1, 2), cos, sin), v.transpose(1, 2)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """q [B, H, Q, D], k/v [B, Hkv, K, D], mask [B, 1, Q, K] bool or None -> [B, Q, hidden]."""
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=False, enable_gqa=self.num_heads != self.num_kv_heads
        )
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


def attend_rule(
    q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, causal: bool
) -> torch.Tensor | None:
    """The layer's own visibility rule by position: q_pos [B, Q], k_pos [B, K] -> bool
    [B, Q, K] (None: every key visible). Causal: ``k <= q``; window W: ``q - k < W`` and, when
    not causal, ``k - q < W`` (the reference drafter's mask)."""
    rule = None
    if causal:
        rule = k_pos[:, None, :] <= q_pos[:, :, None]
    if window is not None:
        dist = q_pos[:, :, None] - k_pos[:, None, :]
        near = dist < window
        if not causal:
            near = near & (dist > -window)
        rule = near if rule is None else rule & near
    return rule


def and_rule(mask: torch.Tensor, rule: torch.Tensor | None) -> torch.Tensor:
    """``mask`` restricted by a layer's rule (None: unrestricted)."""
    return mask if rule is None else mask & rule


class _MLP(nn.Module):
    def __init__(self, config: DFlashConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = config.hidden_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        if self.act in ("silu", "swish"):
            gate = F.silu(gate)
        elif self.act == "gelu_pytorch_tanh":
            gate = F.gelu(gate, approximate="tanh")
        else:
            gate = F.gelu(gate)
        return self.down_proj(gate * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: DFlashConfig) -> None:
        super().__init__()
        self.self_attn = _Attention(config)
        self.mlp = _MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
