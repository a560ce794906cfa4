"""Gated-DeltaNet layers of a hybrid target (Qwen3.5 / Qwen3.6 / Qwen3-Next) on a draft tree.

Vocabulary: B batch, T rows of one forward (N tree nodes), C conv channels, K conv width,
H_k / H_v key / value heads, D_k / D_v their dims.

transformers' ``*GatedDeltaNet.forward`` runs its rows as one causal sequence. During an adapter
forward each such module runs :func:`gdn_layer_forward` instead (swapped in only for the call,
like the attention implementation): the same projections, gate, norm and output projection (the
module's own submodules), but the short convolution reads each row's path (its ancestors, then
the committed tail) and the gated delta rule runs every row along its own path from the
committed state (``difftree_rt.ops.gdn_conv`` / ``gdn_verify``). A verify forward only records
what the commit needs; a causal forward that commits (prefill, AR decode) advances the states
chunk by chunk as it goes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..reference.gated_delta import conv_sources, parents_from_anc
from .linear_state import LinearStates, PendingRows, gdn_ops
from .tree_attention import CONTEXT_KWARG, TreeAttentionContext

__all__ = ["COMMIT_CHUNK", "gated_deltanet_problem", "gdn_layer_forward", "linear_layers"]

#: Rows per chunk of a committing causal forward (a long prompt): each chunk runs from the state
#: the previous one committed, as transformers' chunked form does with its chunks of 64.
COMMIT_CHUNK = 64

_ACTIVATIONS = ("silu", "swish")


def gated_deltanet_problem(module: nn.Module) -> str | None:
    """Why ``module`` is not a Gated-DeltaNet layer this adapter reproduces, or None if it is.

    Two projection layouts are known: Qwen3-Next's fused ``in_proj_qkvz`` / ``in_proj_ba`` and
    Qwen3.5's ``in_proj_qkv`` / ``in_proj_z`` / ``in_proj_b`` / ``in_proj_a``.
    """
    need = ("conv1d", "A_log", "dt_bias", "norm", "out_proj", "num_k_heads", "num_v_heads",
            "head_k_dim", "head_v_dim", "key_dim", "value_dim", "activation")  # fmt: skip
    missing = [n for n in need if not hasattr(module, n)]
    if missing:
        return f"{type(module).__name__} is not a Gated-DeltaNet layer (no {', '.join(missing)})"
    fused = all(hasattr(module, n) for n in ("in_proj_qkvz", "in_proj_ba"))
    split = all(hasattr(module, n) for n in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a"))
    if not (fused or split):
        name = type(module).__name__
        return f"{name}: unknown projection layout (not Qwen3-Next's nor Qwen3.5's)"
    if fused and not hasattr(module, "fix_query_key_value_ordering"):
        return f"{type(module).__name__}: fused projections without fix_query_key_value_ordering"
    act = str(module.activation)
    from transformers.activations import ACT2FN

    if act not in _ACTIVATIONS and act not in ACT2FN:
        return f"{type(module).__name__}: unknown conv activation {act!r}"
    return None


def _project(module: Any, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x [B, T, C] pre-conv q|k|v, z [B, T, H_v, D_v], b [B, T, H_v], a [B, T, H_v])``."""
    num_b, num_t, _ = hidden.shape
    if hasattr(module, "in_proj_qkvz"):
        q, k, v, z, b, a = module.fix_query_key_value_ordering(
            module.in_proj_qkvz(hidden), module.in_proj_ba(hidden)
        )
        x = torch.cat([t.reshape(num_b, num_t, -1) for t in (q, k, v)], dim=-1)
        return x, z, b, a
    x = module.in_proj_qkv(hidden)
    z = module.in_proj_z(hidden).reshape(num_b, num_t, -1, module.head_v_dim)
    return x, z, module.in_proj_b(hidden), module.in_proj_a(hidden)


def _conv(module: Any, x: Tensor, tail: Tensor, src: Tensor) -> Tensor:
    weight = module.conv1d.weight  # [C, 1, K]
    w = weight.reshape(weight.shape[0], weight.shape[-1])
    act = str(module.activation)
    fused = act in _ACTIVATIONS
    xw = x.to(w.dtype).contiguous()
    y = gdn_ops().gdn_conv(xw, tail, w.contiguous(), module.conv1d.bias, src, fused)
    if not fused:
        from transformers.activations import ACT2FN

        y = ACT2FN[act](y)
    return y.to(x.dtype)


def _rule_inputs(
    module: Any, y: Tensor, b: Tensor, a: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """q, k ``[B, T, H_k, D_k]``, v ``[B, T, H_v, D_v]``, g and beta ``[B, T, H_v]`` fp32."""
    num_b, num_t, _ = y.shape
    q, k, v = torch.split(y, [module.key_dim, module.key_dim, module.value_dim], dim=-1)
    # The ops take contiguous rows (split views are strided).
    q = q.reshape(num_b, num_t, -1, module.head_k_dim).contiguous()
    k = k.reshape(num_b, num_t, -1, module.head_k_dim).contiguous()
    v = v.reshape(num_b, num_t, -1, module.head_v_dim).contiguous()
    beta = b.sigmoid().float().contiguous()
    g = (-module.A_log.float().exp() * F.softplus(a.float() + module.dt_bias)).contiguous()
    return q, k, v, g, beta


def _sources(ctx: TreeAttentionContext, num_b: int, num_t: int, kernel: int, dev: Any) -> Tensor:
    """Conv sources of the forward's rows (shared by every linear layer: cached on ctx)."""
    key = ("conv_src", num_t, kernel)
    found = ctx.extras.get(key)
    if found is None:
        parent = parents_from_anc(ctx.tree_anc, num_b, num_t, dev)
        found = conv_sources(parent, kernel)
        ctx.extras[key] = found
    return found


def _chunk_commit(
    ctx: TreeAttentionContext, c0: int, rows: int, num_b: int, dev: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """``(path [B, rows], accepted [B], active [B])`` committing chunk ``[c0, c0 + rows)`` of a
    causal forward: request b's real rows only (the same for every linear layer: cached on
    ctx)."""
    key = ("chunk_commit", c0, rows)
    found = ctx.extras.get(key)
    if found is None:
        assert ctx.commit_rows is not None
        real = (ctx.commit_rows - c0).clamp(0, rows)
        path = torch.arange(rows, device=dev).repeat(num_b, 1)
        found = (path, (real - 1).clamp(min=0), real > 0)
        ctx.extras[key] = found
    return found


def gdn_layer_forward(
    module: nn.Module,
    hidden_states: Tensor,
    cache_params: Any = None,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """The module's forward over the rows of an adapter forward (see the module docstring).

    Args:
        hidden_states: ``[B, T, hidden]``.
        cache_params: the adapter's ``StaticKVCache`` (holds the layer's :class:`LinearStates`).

    Returns:
        ``[B, T, hidden]``.
    """
    ctx = kwargs.get(CONTEXT_KWARG)
    states: LinearStates | None = getattr(cache_params, "linear", None)
    if not isinstance(ctx, TreeAttentionContext) or not states:
        raise RuntimeError(
            f"{type(module).__name__}: the tree forward of a linear-attention layer needs the "
            "TargetAdapter's context and cache"
        )
    m: Any = module
    idx = int(m.layer_idx)
    conv_tail, state = states.conv[idx], states.state[idx]
    num_b, num_t, _ = hidden_states.shape
    x, z, b, a = _project(m, hidden_states)
    kernel = conv_tail.shape[-1] + 1
    ops = gdn_ops()
    if ctx.commit_rows is None:
        # Verify: every row along its own path; the commit comes later, from what is kept here.
        src = _sources(ctx, num_b, num_t, kernel, x.device)
        y = _conv(m, x, conv_tail, src)
        q, k, v, g, beta = _rule_inputs(m, y, b, a)
        out, k_hat, delta, gcum = ops.gdn_verify(q, k, v, g, beta, state, ctx.tree_anc)
        states.pending[idx] = PendingRows(x.contiguous(), src, k_hat, delta, gcum)
    else:
        # Causal rows committed as they go (request b keeps its first commit_rows[b] rows).
        outs = []
        for c0 in range(0, num_t, COMMIT_CHUNK):
            c1 = min(num_t, c0 + COMMIT_CHUNK)
            rows = c1 - c0
            src = _sources(ctx, num_b, rows, kernel, x.device)
            xc = x[:, c0:c1].contiguous()
            y = _conv(m, xc, conv_tail, src)
            q, k, v, g, beta = _rule_inputs(m, y, b[:, c0:c1], a[:, c0:c1])
            out_c, k_hat, delta, gcum = ops.gdn_verify(q, k, v, g, beta, state, None)
            path, accepted, active = _chunk_commit(ctx, c0, rows, num_b, x.device)
            ops.gdn_conv_commit(conv_tail, xc, src, path, accepted, active)
            ops.gdn_commit(state, k_hat, delta, gcum, path, accepted, active)
            outs.append(out_c)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    d_v = m.head_v_dim
    core = m.norm(out.reshape(-1, d_v), z.reshape(-1, d_v))
    return m.out_proj(core.reshape(num_b, num_t, -1))


@contextlib.contextmanager
def linear_layers(modules: list[nn.Module]) -> Iterator[None]:
    """Run ``modules`` through :func:`gdn_layer_forward` for the duration (the model is a plain
    HF model again afterwards)."""
    for mod in modules:
        mod.forward = gdn_layer_forward.__get__(mod)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for mod in modules:
            del mod.forward
