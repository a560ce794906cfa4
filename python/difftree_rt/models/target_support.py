"""Which HF causal LMs the target adapter reproduces exactly, checked before anything is built.

Vocabulary: H attention heads, H_kv key/value heads, D head dim, W sliding window.

A target is refused (``ValueError`` naming the model class, its ``model_type`` and what is
unsupported) when its structure does not fit the static cache and tree attention, or when its
tokens under speculative verification would differ from its own ``generate``:

- RoPE whose frequencies depend on the sequence length of the forward (``rope_type``
  ``"dynamic"``/``"*dynamic*"`` and ``"longrope"``): HF recomputes them from the largest position
  of each forward, and verify forwards run ahead of the committed length (and HF's own loop
  switches at ``original_max_position_embeddings``), so the same token gets other rotations.
- Attention logit soft-capping (Gemma-2 ``attn_logit_softcapping``): tree attention computes
  softmax attention without it.
- Layer types other than full and sliding-window attention and Gated-DeltaNet linear attention.

Supported per layer (:mod:`.target_layers`): full attention, sliding windows, attention sinks
(gpt-oss), per-layer head sizes and KV heads (Gemma-4), latent attention (DeepSeek-V3 / Kimi),
Gated-DeltaNet linear attention (Qwen3.5 / Qwen3.6 / Qwen3-Next, :mod:`.linear_attention`).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .linear_attention import gated_deltanet_problem
from .target_layers import LINEAR, LayerSpec, layer_specs

__all__ = ["TargetGeometry", "check_target_model"]

_SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention", LINEAR)


@dataclass(frozen=True)
class TargetGeometry:
    """The attention layers of a supported target.

    Attributes:
        layers: the decoder layer stack.
        specs: one :class:`~.target_layers.LayerSpec` per layer (what it caches and how).
    """

    layers: nn.ModuleList
    specs: tuple[LayerSpec, ...]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def kv_bytes_per_row(self, batch_size: int, dtype: torch.dtype) -> int:
        """Bytes one more cache row costs for ``batch_size`` requests: every full-length layer's
        K and V (a sliding layer's ring has a fixed size; counted as full-length here, an upper
        bound, when it is not a ring)."""
        item = torch.empty((), dtype=dtype).element_size()
        return batch_size * sum(spec.row_bytes(item) for spec in self.specs)


def _unsupported(model: nn.Module, what: str) -> ValueError:
    model_type = getattr(model.config, "model_type", None) or "?"
    return ValueError(
        f"model: unsupported model {type(model).__name__} (model_type {model_type!r}): {what}"
    )


def _find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer stack (``model.model.layers`` for HF causal LMs)."""
    candidates: list[Any] = []
    inner = getattr(model, "model", None)
    if inner is not None:
        candidates.append(inner)
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        with contextlib.suppress(Exception):
            candidates.append(get_decoder())
    candidates.append(model)
    for cand in candidates:
        layers = getattr(cand, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise _unsupported(
        model,
        "no decoder layer stack found (expected an nn.ModuleList at `model.model.layers` or "
        "`model.get_decoder().layers`)",
    )


def _rope_settings(config: Any) -> list[tuple[str | None, dict[str, Any]]]:
    """``(layer type or None, rope settings)`` for every RoPE setting the model uses, from
    ``config.rope_parameters`` (transformers 5) and the older ``config.rope_scaling``; a dict
    keyed by layer type counts only for the layer types of ``config.layer_types``."""
    layer_types = getattr(config, "layer_types", None)
    found: list[tuple[str | None, dict[str, Any]]] = []
    for attr in ("rope_parameters", "rope_scaling"):
        params = getattr(config, attr, None)
        if not isinstance(params, dict):
            continue
        if "rope_type" in params or "type" in params:
            found.append((None, params))
            continue
        for layer_type, sub in params.items():
            if isinstance(sub, dict) and (layer_types is None or layer_type in layer_types):
                found.append((layer_type, sub))
    return found


def _check_rope(model: nn.Module) -> None:
    for layer_type, params in _rope_settings(model.config):
        rope_type = str(params.get("rope_type", params.get("type", "default")))
        if "dynamic" not in rope_type and rope_type != "longrope":
            continue
        where = f" on its {layer_type} layers" if layer_type is not None else ""
        if rope_type == "longrope":
            switch = params.get(
                "original_max_position_embeddings",
                getattr(model.config, "original_max_position_embeddings", None),
            )
            why = (
                "its RoPE frequencies switch with the sequence length (HF recomputes them when a "
                f"forward's positions cross original_max_position_embeddings={switch})"
            )
        else:
            why = (
                "its RoPE frequencies grow with the sequence length of each forward (dynamic NTK "
                "scaling)"
            )
        raise _unsupported(
            model,
            f"rope_type={rope_type!r}{where} is not supported: {why}, and tree verification "
            "runs positions ahead of the committed length, so decoding would not reproduce the "
            "model's own tokens",
        )


def _hybrid_routes(model: nn.Module) -> bool:
    """A hybrid linear-attention model (Qwen3.5 / Qwen3-Next) leaves
    ``_supports_attention_backend`` unset for its linear layers' sake, yet its attention layers
    do call transformers' ``ALL_ATTENTION_FUNCTIONS``: accept it when every attention layer's
    forward does."""
    types = getattr(model.config, "layer_types", None)
    if not types or LINEAR not in types:
        return False
    try:
        layers = _find_decoder_layers(model)
    except ValueError:
        return False
    for kind, layer in zip(types, layers, strict=False):
        if kind == LINEAR:
            continue
        attn = getattr(layer, "self_attn", None)
        try:
            source = inspect.getsource(type(attn).forward)
        except (TypeError, OSError):
            return False
        if "ALL_ATTENTION_FUNCTIONS" not in source:
            return False
    return True


def check_target_model(model: nn.Module) -> TargetGeometry:
    """Check that ``model`` is a decoder-only HF causal LM the adapter reproduces exactly.

    Raises:
        ValueError: naming the model class, its ``model_type`` and what is unsupported.

    Returns:
        its attention geometry.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch nn.Module, got {type(model).__name__}")
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"model: unsupported model {type(model).__name__}: no `config`")
    if getattr(config, "is_encoder_decoder", False):
        raise _unsupported(
            model, "encoder-decoder models are not supported (need a decoder-only causal LM)"
        )
    missing = [
        f
        for f in ("num_hidden_layers", "num_attention_heads", "hidden_size", "vocab_size")
        if not isinstance(getattr(config, f, None), int)
    ]
    if missing:
        raise _unsupported(model, f"config lacks {', '.join(missing)}")
    softcap = getattr(config, "attn_logit_softcapping", None)
    if softcap is not None:
        raise _unsupported(
            model,
            f"attention logit soft-capping (attn_logit_softcapping={softcap}) is not supported: "
            "tree attention computes plain softmax attention",
        )
    if not getattr(model, "_supports_attention_backend", False) and not _hybrid_routes(model):
        raise _unsupported(
            model,
            "it does not route attention through transformers' AttentionInterface "
            "(`_supports_attention_backend` is not set), so tree attention cannot be plugged in",
        )
    _check_rope(model)

    num_layers: int = config.num_hidden_layers
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        bad = sorted({t for t in layer_types if t not in _SUPPORTED_LAYER_TYPES})
        if bad:
            raise _unsupported(
                model,
                f"layer types {bad} are not standard attention layers (supported: "
                f"{list(_SUPPORTED_LAYER_TYPES)})",
            )
    layers = _find_decoder_layers(model)
    if len(layers) != num_layers:
        raise ValueError(
            f"model: found {len(layers)} decoder layers but config.num_hidden_layers={num_layers}"
        )
    types = list(layer_types) if layer_types is not None else [None] * num_layers
    for i, layer in enumerate(layers):
        if types[i] == LINEAR:
            problem = gated_deltanet_problem(getattr(layer, "linear_attn", None) or layer)
            if problem is not None:
                raise _unsupported(model, f"linear-attention layer {i}: {problem}")
    attn_missing = [
        i
        for i, layer in enumerate(layers)
        if types[i] != LINEAR
        and getattr(getattr(layer, "self_attn", None), "layer_idx", None) is None
    ]
    if attn_missing:
        raise _unsupported(
            model,
            f"decoder layers {attn_missing} have no `self_attn` module with a `layer_idx` (not a "
            "standard decoder layer)",
        )
    try:
        specs = layer_specs(model, layers)
    except ValueError as e:
        raise _unsupported(model, str(e)) from None
    if next(model.parameters(), None) is None:
        raise ValueError(f"model: {type(model).__name__} has no parameters")
    return TargetGeometry(layers, tuple(specs))
