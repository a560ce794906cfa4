"""Per-layer state kinds of a target (DESIGN.md §7): what each decoder layer caches and how.

Vocabulary: B batch, H heads of a cached tensor, D its row width, W sliding window, S_max cache
rows of a full-length layer, T rows of one forward.

Every attention layer caches what it hands to ``Cache.update``: K rows ``[B, H_k, ·, D_k]`` and
V rows ``[B, H_v, ·, D_v]``. For standard attention both are ``(H_kv, head_dim)`` of that layer
(per-layer values, read from transformers' per-layer config, never a global ``head_dim``). For
multi-head latent attention (DeepSeek-V3 / Kimi) transformers caches the compressed latent
(``kv_lora_rank`` wide) as "K" and the shared rotary key (``qk_rope_head_dim`` wide) as "V", one
head each, and expands them after the cache read. A sliding-window layer needs only the last
``W - 1`` committed rows plus the rows of the current forward: it keeps a ring of
``W - 1 + T_max`` slots (row r in slot ``r % slots``) when that is smaller than S_max. A layer
that reuses another layer's K/V (Gemma-4 KV sharing) caches nothing. A Gated-DeltaNet
linear-attention layer (Qwen3.5 / Qwen3-Next) caches no rows at all: a fixed-size state per
request (:class:`LinearSpec`: a conv tail and a recurrent state, see ``linear_state``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = [
    "FULL",
    "LINEAR",
    "SLIDING",
    "LayerSpec",
    "LinearSpec",
    "layer_config",
    "layer_specs",
    "ring_slots",
]

FULL = "full_attention"
SLIDING = "sliding_attention"
LINEAR = "linear_attention"


@dataclass(frozen=True)
class LinearSpec:
    """The state of one Gated-DeltaNet layer per request.

    Attributes:
        channels: C, the conv channels (``2 * H_k * D_k + H_v * D_v``).
        kernel: K, the conv width (the tail keeps K - 1 rows).
        key_heads, key_dim: H_k, D_k; value_heads, value_dim: H_v, D_v (H_v a multiple of H_k).
    """

    channels: int
    kernel: int
    key_heads: int
    key_dim: int
    value_heads: int
    value_dim: int


@dataclass(frozen=True)
class LayerSpec:
    """The cached state of one decoder layer.

    Attributes:
        index: decoder layer id.
        kind: ``"full_attention"``, ``"sliding_attention"`` or ``"linear_attention"``.
        window: W for a sliding layer, 0 for full attention.
        key: ``(H_k, D_k)`` of the cached K rows; value: ``(H_v, D_v)`` of the cached V rows.
        sinks: the layer adds learned per-head sink logits to its softmax (gpt-oss).
        owns_cache: False when the layer caches no K/V rows (it reads another layer's, or it is
            a linear-attention layer).
        linear: the state of a linear-attention layer, else None.
    """

    index: int
    kind: str
    window: int
    key: tuple[int, int]
    value: tuple[int, int]
    sinks: bool = False
    owns_cache: bool = True
    linear: LinearSpec | None = None

    def slots(self, max_length: int, max_forward_rows: int | None) -> int:
        """Rows this layer's cache holds per request (see :func:`ring_slots`)."""
        return ring_slots(self.window, max_length, max_forward_rows)

    def row_bytes(self, item_size: int) -> int:
        """Bytes of one cached row (K and V) of one request."""
        if not self.owns_cache:
            return 0
        return (self.key[0] * self.key[1] + self.value[0] * self.value[1]) * item_size


def ring_slots(window: int, max_length: int, max_forward_rows: int | None) -> int:
    """Slots of a layer's cache: S_max for full attention (or without a forward-size bound),
    else ``min(S_max, W - 1 + T_max)`` — the window's committed rows plus one forward's rows."""
    if window <= 0 or max_forward_rows is None:
        return max_length
    return min(max_length, window - 1 + max_forward_rows)


def layer_config(config: Any, index: int) -> Any:
    """Layer ``index``'s view of ``config``: transformers' per-layer config for heterogeneous
    configs (Gemma-4: global and sliding layers differ in head size and KV heads), else the
    config itself."""
    if getattr(config, "is_heterogeneous", False):
        return config.per_layer_config[index]
    return config


def _layer_types(config: Any, num_layers: int) -> list[str]:
    types = getattr(config, "layer_types", None)
    if types is not None:
        return [str(t) for t in types]
    window = getattr(config, "sliding_window", None)
    use = getattr(config, "use_sliding_window", True)
    kind = SLIDING if window is not None and use is not False else FULL
    return [kind] * num_layers


def layer_specs(model: nn.Module, layers: nn.ModuleList) -> list[LayerSpec]:
    """One :class:`LayerSpec` per decoder layer of ``model``.

    Raises:
        ValueError: a layer whose cached shapes cannot be derived, or whose projections disagree
            with its config (the message names the layer).
    """
    config = model.config
    types = _layer_types(config, len(layers))
    specs = []
    for i, layer in enumerate(layers):
        cfg = layer_config(config, i)
        kind = types[i]
        if kind == LINEAR:
            specs.append(_linear_spec(i, layer.linear_attn))
            continue
        attn = layer.self_attn
        window = 0
        if kind == SLIDING:
            window = getattr(attn, "sliding_window", None) or getattr(cfg, "sliding_window", None)
            if not isinstance(window, int) or window < 1:
                raise ValueError(f"layer {i}: sliding_attention without a sliding_window")
        heads = cfg.num_attention_heads
        if getattr(cfg, "kv_lora_rank", None) is not None:
            key: tuple[int, int] = (1, int(cfg.kv_lora_rank))
            value: tuple[int, int] = (1, int(cfg.qk_rope_head_dim))
        else:
            num_kv = getattr(cfg, "num_key_value_heads", None) or heads
            dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
            dim = getattr(attn, "head_dim", dim)  # the module's own value wins when it has one
            if num_kv < 1 or heads % num_kv != 0:
                raise ValueError(
                    f"layer {i}: num_attention_heads={heads} is not a multiple of "
                    f"num_key_value_heads={num_kv}"
                )
            key = value = (int(num_kv), int(dim))
            k_proj = getattr(attn, "k_proj", None)
            if isinstance(k_proj, nn.Linear) and k_proj.out_features != num_kv * dim:
                raise ValueError(
                    f"layer {i}: k_proj has {k_proj.out_features} outputs but its config gives "
                    f"H_kv={num_kv} x head_dim={dim}"
                )
        specs.append(
            LayerSpec(
                index=i,
                kind=kind,
                window=int(window),
                key=key,
                value=value,
                sinks=getattr(attn, "sinks", None) is not None,
                owns_cache=not getattr(attn, "is_kv_shared_layer", False),
            )
        )
    return specs


def _linear_spec(index: int, module: nn.Module) -> LayerSpec:
    """A Gated-DeltaNet layer's spec, read from the module itself (every size is an attribute
    of transformers' ``*GatedDeltaNet``)."""
    h_k, d_k = int(module.num_k_heads), int(module.head_k_dim)
    h_v, d_v = int(module.num_v_heads), int(module.head_v_dim)
    if h_k < 1 or h_v % h_k != 0:
        raise ValueError(
            f"layer {index}: linear_num_value_heads={h_v} is not a multiple of "
            f"linear_num_key_heads={h_k}"
        )
    weight = module.conv1d.weight  # [C, 1, K]
    channels, kernel = int(weight.shape[0]), int(weight.shape[-1])
    if channels != 2 * h_k * d_k + h_v * d_v:
        raise ValueError(
            f"layer {index}: conv1d has {channels} channels, expected 2 * H_k * D_k + H_v * D_v "
            f"= {2 * h_k * d_k + h_v * d_v}"
        )
    linear = LinearSpec(channels, kernel, h_k, d_k, h_v, d_v)
    return LayerSpec(
        index=index, kind=LINEAR, window=0, key=(0, 0), value=(0, 0), owns_cache=False,
        linear=linear,
    )  # fmt: skip
