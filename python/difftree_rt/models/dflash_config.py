"""Configuration of a DFlash drafter, in the published checkpoint layout.

A published DFlash drafter directory holds ``config.json`` and ``model.safetensors``. The
config is a Qwen3 config (``model_type: "qwen3"``, ``architectures: ["DFlashDraftModel"]``)
plus the drafter fields:

- ``block_size`` (top level; some variants repeat it inside ``dflash_config``),
- ``num_target_layers`` (top level; some variants put it inside ``dflash_config``),
- ``dflash_config``: ``{"mask_token_id": int, "target_layer_ids": [int, ...]}`` and, in
  later variants, optional scalars (``input_embedding_scale``, ``output_multiplier``,
  ``final_logit_softcapping``, ``causal``).

Drafters for windowed targets (gpt-oss, Gemma-4, Qwen3.5/3.6, ...) add the Qwen3 attention
fields ``layer_types`` (``full_attention`` / ``sliding_attention`` per drafter layer),
``sliding_window``, ``use_sliding_window``, ``max_window_layers`` and a top-level
``is_causal``; they are read exactly as transformers' ``Qwen3Config`` reads them (the
reference drafter is built on it; docs/NOTES.md "Drafter variants (issue 16)"):

- the window is ``sliding_window`` only when ``use_sliding_window`` is true (Qwen3Config drops
  it otherwise); without ``layer_types``, layers ``>= max_window_layers`` slide;
- a ``sliding_attention`` layer attends keys with ``q - k < window`` (and ``k - q < window``
  when not causal); a sliding layer whose window was dropped attends unwindowed;
- a layer is causal (``k <= q``) when ``is_causal`` says so, else when
  ``dflash_config.causal`` says so, else when it is a ``sliding_attention`` layer.

Readers look a drafter field up in ``dflash_config`` first and fall back to the top level, so
both placements load. Fields this runtime does not model are kept verbatim in
:attr:`DFlashConfig.extra` / :attr:`DFlashConfig.dflash_extra` and written back on save;
fields that would change the architecture (DFlash2 convs and selectors, MiMo-style
``use_swa``, sinks, MLA, partial rotary, other layer types) are rejected instead of silently
ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["DFlashConfig", "default_target_layer_ids", "read_json"]

# Top-level keys that DFlashConfig models explicitly (everything else goes to ``extra``).
_MODELED_KEYS = frozenset(
    {
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "rms_norm_eps",
        "hidden_act",
        "attention_bias",
        "attention_dropout",
        "max_position_embeddings",
        "initializer_range",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "block_size",
        "num_target_layers",
        "target_layer_ids",
        "mask_token_id",
        "dflash_config",
        "model_type",
        "architectures",
        "auto_map",
        "layer_types",
        "use_sliding_window",
        "sliding_window",
        "max_window_layers",
        "dtype",
        "torch_dtype",
        "is_causal",
    }
)
_MODELED_DFLASH_KEYS = frozenset(
    {
        "mask_token_id",
        "target_layer_ids",
        "block_size",
        "num_target_layers",
        "input_embedding_scale",
        "output_multiplier",
        "final_logit_softcapping",
    }
)
# Fields that mark an architecture this module does not implement (DFlash2 convs / selector,
# Domino / DSpark projectors, MLA attention, partial rotary, attention sinks).
_UNSUPPORTED_FIELDS = (
    "conv_kernel_size",
    "conv_group_size",
    "selector_rank",
    "selector_top_k",
    "markov_rank",
    "gru_hidden_dim",
    "attention_sink_bias",
    "attention_value_scale",
)
# RoPE types whose frequencies depend on the sequence length at run time; the drafter caches
# rotated keys, so only static frequency tables are supported.
_DYNAMIC_ROPE_TYPES = frozenset({"dynamic", "longrope"})
FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
_LAYER_TYPES = (FULL_ATTENTION, SLIDING_ATTENTION)
# transformers' Qwen3Config default: without layer_types, layers >= 28 slide (if windowed).
_QWEN3_MAX_WINDOW_LAYERS = 28


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """The decoded JSON file at ``path``: ``FileNotFoundError`` or ``ValueError`` naming the
    path (and ``what`` it should hold) when it is missing, unreadable or not JSON."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {path} does not exist or is not a file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} file {path} is not valid JSON: {e}") from None


def default_target_layer_ids(num_target_layers: int, num_feature_layers: int) -> list[int]:
    """Evenly spaced feature layers, as published DFlash drafters choose them.

    ``k = num_feature_layers`` layers are taken from 1 to ``N - 3`` (``N`` =
    ``num_target_layers``): ``round(1 + i * (N - 4) / (k - 1))`` for ``i = 0..k-1``; a single
    layer is ``N // 2``. Rounding is Python's ``round`` (half to even), the same as the
    reference implementation, so ids match published configs bit for bit (e.g. ``N = 36,
    k = 5 -> [1, 9, 17, 25, 33]``).
    """
    if num_target_layers < 1:
        raise ValueError(f"num_target_layers must be >= 1, got {num_target_layers}")
    if num_feature_layers < 1:
        raise ValueError(f"num_feature_layers must be >= 1, got {num_feature_layers}")
    if num_feature_layers == 1:
        return [num_target_layers // 2]
    span = num_target_layers - 4
    return [round(1 + i * span / (num_feature_layers - 1)) for i in range(num_feature_layers)]


def _rope_from_dict(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise the two published RoPE spellings into one ``rope_parameters`` dict.

    transformers 5 writes ``rope_parameters = {"rope_type", "rope_theta", ...}``; 4.x writes
    ``rope_theta`` plus an optional ``rope_scaling`` dict (``type`` or ``rope_type``).
    ``ValueError`` naming the field when one is of the wrong type or ``rope_theta`` is not a
    finite number > 0.
    """
    params, scaling = raw.get("rope_parameters"), raw.get("rope_scaling")
    for name, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(f"{name} must be an object or null, got {value!r}")
    if isinstance(params, Mapping) and isinstance(params.get(FULL_ATTENTION), Mapping):
        # Per-layer-type tables (e.g. Gemma 3): the reference drafter builds one rotary table
        # for every layer (Qwen3RotaryEmbedding), the full-attention one; _parse refuses a
        # different sliding table when the drafter has sliding layers.
        params = params[FULL_ATTENTION]
    if params:
        out = dict(params)
        where = "rope_parameters"
    else:
        out = dict(scaling or {})
        if "rope_theta" in raw:
            out["rope_theta"] = raw["rope_theta"]
        where = "rope_scaling"
    if "type" in out and "rope_type" not in out:
        out["rope_type"] = out.pop("type")
    out.setdefault("rope_type", "default")
    if not isinstance(out["rope_type"], str):
        raise ValueError(f"{where}.rope_type must be a string, got {out['rope_type']!r}")
    # transformers' own default for Qwen3 / Llama configs without a theta.
    out.setdefault("rope_theta", 10000.0)
    error = _check_number("rope_theta", out["rope_theta"], 0.0, True)
    if error:
        raise ValueError(error)
    out["rope_theta"] = float(out["rope_theta"])
    return out


def _check_int(label: str, value: Any, lo: int) -> str | None:
    """The error for field ``label`` unless ``value`` is an int >= ``lo`` (JSON: an integer;
    a float such as 256.9 or 256.0, a bool or a string is refused, never converted)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{label} must be an integer, got {value!r}"
    if value < lo:
        return f"{label} must be >= {lo}, got {value}"
    return None


def _check_number(label: str, value: Any, lo: float | None, lo_open: bool) -> str | None:
    """The error for field ``label`` unless ``value`` is a finite number (int or float, not a
    bool), ``> lo`` (``lo_open``) or ``>= lo`` when ``lo`` is set."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{label} must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"{label} must be finite, got {value}"
    if lo is not None and (value <= lo if lo_open else value < lo):
        return f"{label} must be {'>' if lo_open else '>='} {lo}, got {value}"
    return None


def _parse_window(raw: Mapping[str, Any]) -> tuple[int | None, list[str]]:
    """The effective window of the sliding layers, as transformers' Qwen3Config computes it
    (``sliding_window`` if ``use_sliding_window`` else None), and the errors in those fields."""
    use = raw.get("use_sliding_window", False)
    window = raw.get("sliding_window")
    errors: list[str] = []
    if use is None:
        use = False
    if not isinstance(use, bool):
        errors.append(f"use_sliding_window must be true or false, got {use!r}")
    if window is not None:
        error = _check_int("sliding_window", window, 1)
        if error:
            errors.append(error)
    if errors:
        return None, errors
    return (window if use else None), errors


def _sliding_rope_error(raw: Mapping[str, Any], rope: Mapping[str, Any]) -> str | None:
    """The refusal of a per-layer-type RoPE table whose sliding entry differs from the one
    table the reference drafter builds for every layer, or None."""
    params = raw.get("rope_parameters")
    if not isinstance(params, Mapping) or not isinstance(params.get(SLIDING_ATTENTION), Mapping):
        return None
    try:
        sliding = _rope_from_dict({"rope_parameters": params[SLIDING_ATTENTION]})
    except ValueError as e:
        return f"rope_parameters.{SLIDING_ATTENTION}: {e}"
    if sliding != dict(rope):
        return (
            f"rope_parameters.{SLIDING_ATTENTION} ({sliding}) differs from the full-attention "
            f"table ({dict(rope)}); the reference drafter rotates every layer with one table"
        )
    return None


# Field -> smallest value, for the integer fields (None is allowed for the optional ones).
_INT_FIELDS = {
    "hidden_size": 1,
    "intermediate_size": 1,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "head_dim": 1,
    "vocab_size": 1,
    "mask_token_id": 0,
    "block_size": 2,  # the bonus slot + at least one draft slot
    "num_target_layers": 1,
    "max_position_embeddings": 1,
}
# Field -> (lower bound or None, bound excluded), for the float fields.
_FLOAT_FIELDS: dict[str, tuple[float | None, bool]] = {
    "rms_norm_eps": (0.0, True),
    "initializer_range": (0.0, False),
    "input_embedding_scale": (None, False),
    "output_multiplier": (None, False),
    "final_logit_softcapping": (0.0, True),
}
_OPTIONAL_FIELDS = frozenset({"num_target_layers", "final_logit_softcapping"})
_HIDDEN_ACTS = ("silu", "swish", "gelu", "gelu_pytorch_tanh")


def _field_errors(fields: Mapping[str, tuple[str, Any]]) -> list[str]:
    """One line per field of the wrong type or out of range: ``fields`` maps a
    :class:`DFlashConfig` field to (the label to report, e.g. ``dflash_config.block_size``, and
    the value). Fields absent from ``fields`` are not checked."""
    errors: list[str] = []
    for name, (label, value) in fields.items():
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        if name in _INT_FIELDS:
            error = _check_int(label, value, _INT_FIELDS[name])
        elif name in _FLOAT_FIELDS:
            error = _check_number(label, value, *_FLOAT_FIELDS[name])
        elif name == "target_layer_ids":
            if not isinstance(value, (list, tuple)) or not value:
                error = f"{label} must be a non-empty list of integers, got {value!r}"
            else:
                error = next((e for i in value if (e := _check_int(f"{label} entry", i, 0))), None)
        elif name == "hidden_act":
            error = (
                None
                if isinstance(value, str) and value in _HIDDEN_ACTS
                else f"{label} must be one of {', '.join(_HIDDEN_ACTS)}, got {value!r}"
            )
        elif name == "attention_bias":
            error = (
                None if isinstance(value, bool) else f"{label} must be true or false, got {value!r}"
            )
        else:
            error = None
        if error:
            errors.append(error)
    return errors


@dataclasses.dataclass
class DFlashConfig:
    """Hyper-parameters of a DFlash drafter (Qwen3-style decoder layers).

    ``hidden_size`` and ``vocab_size`` must equal the target's (the drafter consumes the
    target's token embeddings and feeds the target's LM head). ``target_layer_ids`` are
    0-based decoder layers of the target whose outputs are concatenated into the context
    features, so ``fc`` maps ``len(target_layer_ids) * hidden_size`` to ``hidden_size``.
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    target_layer_ids: list[int]
    mask_token_id: int
    block_size: int = 16
    num_target_layers: int | None = None
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    attention_bias: bool = False
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rope_parameters: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0}
    )
    input_embedding_scale: float = 1.0
    output_multiplier: float = 1.0
    final_logit_softcapping: float | None = None
    # Per drafter layer: "full_attention" or "sliding_attention" (None: all full).
    layer_types: list[str] | None = None
    # The window of the sliding layers (keys with q - k < window); None: they attend unwindowed
    # (what the reference does when the config's use_sliding_window is false).
    sliding_window: int | None = None
    # Causal attention in every layer (k <= q); None: dflash_config.causal, else the sliding
    # layers only.
    is_causal: bool | None = None
    # Unmodelled fields, preserved across a load / save round trip.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    dflash_extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.target_layer_ids, tuple):
            self.target_layer_ids = list(self.target_layer_ids)
        if self.layer_types is None and isinstance(self.num_hidden_layers, int):
            self.layer_types = [FULL_ATTENTION] * self.num_hidden_layers
        elif isinstance(self.layer_types, tuple):
            self.layer_types = list(self.layer_types)
        try:
            self.rope_parameters = _rope_from_dict({"rope_parameters": self.rope_parameters})
        except ValueError as e:
            raise ValueError(f"invalid DFlash config: {e}") from None
        self.validate()

    # ------------------------------------------------------------------ properties
    @property
    def num_feature_layers(self) -> int:
        """k: how many target layers are concatenated into one context feature row."""
        return len(self.target_layer_ids)

    @property
    def feature_size(self) -> int:
        """Width of a context feature row: ``k * hidden_size``."""
        return self.num_feature_layers * self.hidden_size

    @property
    def rope_theta(self) -> float:
        return float(self.rope_parameters["rope_theta"])

    @property
    def rope_type(self) -> str:
        return str(self.rope_parameters.get("rope_type", "default"))

    def layer_window(self, layer: int) -> int | None:
        """The attention window of drafter layer ``layer`` (keys with ``q - k < window``), or
        None when it attends every key."""
        assert self.layer_types is not None  # set in __post_init__
        return self.sliding_window if self.layer_types[layer] == SLIDING_ATTENTION else None

    def layer_causal(self, layer: int) -> bool:
        """Whether drafter layer ``layer`` is causal (block rows see keys at positions
        ``<= q`` only): ``is_causal``, else ``dflash_config.causal``, else whether it is a
        sliding layer (the reference drafter's rule)."""
        assert self.layer_types is not None
        if self.is_causal is not None:
            return self.is_causal
        causal = self.dflash_extra.get("causal")
        if isinstance(causal, bool):
            return causal
        return self.layer_types[layer] == SLIDING_ATTENTION

    @property
    def windowed_layers(self) -> list[int]:
        """The drafter layers that attend through a window."""
        return [i for i in range(self.num_hidden_layers) if self.layer_window(i) is not None]

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming every field of the wrong type or out of range (first)
        or internally inconsistent."""
        names = [*_INT_FIELDS, *_FLOAT_FIELDS, "target_layer_ids", "hidden_act", "attention_bias"]
        errors = _field_errors({name: (name, getattr(self, name)) for name in names})
        if errors:  # the checks below assume the types are right
            raise ValueError("invalid DFlash config: " + "; ".join(errors))
        if self.num_attention_heads % max(self.num_key_value_heads, 1) != 0:
            errors.append(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2 != 0:
            errors.append(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.num_target_layers is not None and any(
            i >= self.num_target_layers for i in self.target_layer_ids
        ):
            errors.append(
                f"target_layer_ids {self.target_layer_ids} out of range for "
                f"num_target_layers={self.num_target_layers}"
            )
        if not 0 <= self.mask_token_id < self.vocab_size:
            errors.append(
                f"mask_token_id {self.mask_token_id} out of range for vocab_size={self.vocab_size}"
            )
        if self.rope_type in _DYNAMIC_ROPE_TYPES:
            errors.append(
                f"rope_type {self.rope_type!r} is not supported (frequencies depend on the "
                "sequence length, but drafter keys are cached already rotated)"
            )
        elif self.rope_type != "default":
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            if self.rope_type not in ROPE_INIT_FUNCTIONS:
                static = sorted(set(ROPE_INIT_FUNCTIONS) - _DYNAMIC_ROPE_TYPES)
                errors.append(
                    f"unsupported rope_type {self.rope_type!r} (static types: {', '.join(static)})"
                )
        errors.extend(self._attention_errors())
        if errors:
            raise ValueError("invalid DFlash config: " + "; ".join(errors))

    def _attention_errors(self) -> list[str]:
        """The errors in ``layer_types``, ``sliding_window``, ``is_causal`` and
        ``dflash_config.causal``."""
        errors: list[str] = []
        types = self.layer_types
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            errors.append(f"layer_types must be a list of strings, got {types!r}")
        else:
            if len(types) != self.num_hidden_layers:
                errors.append(
                    f"layer_types has {len(types)} entries for num_hidden_layers="
                    f"{self.num_hidden_layers} (one per drafter layer)"
                )
            bad = sorted({t for t in types if t not in _LAYER_TYPES})
            if bad:
                errors.append(
                    f"unsupported drafter layer type(s) {', '.join(map(repr, bad))} in "
                    f"layer_types (supported: {', '.join(_LAYER_TYPES)})"
                )
        if self.sliding_window is not None:
            error = _check_int("sliding_window", self.sliding_window, 1)
            if error:
                errors.append(error)
        if self.is_causal is not None and not isinstance(self.is_causal, bool):
            errors.append(f"is_causal must be true, false or null, got {self.is_causal!r}")
        causal = self.dflash_extra.get("causal")
        if causal is not None and not isinstance(causal, bool):
            errors.append(f"dflash_config.causal must be true, false or null, got {causal!r}")
        return errors

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str | None = None) -> DFlashConfig:
        """Parse a published drafter ``config.json`` (already decoded); ``ValueError`` naming
        every missing field, field of the wrong type or out of range, and unsupported
        variant (prefixed with ``source``, the file it came from, when given)."""
        try:
            return cls._parse(raw)
        except ValueError as e:
            if source is None:
                raise
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def _parse(cls, raw: Mapping[str, Any]) -> DFlashConfig:
        if not isinstance(raw, Mapping):
            raise ValueError(f"a DFlash config must be a JSON object, got {type(raw).__name__}")
        raw = copy.deepcopy(dict(raw))
        dflash_raw = raw.get("dflash_config")
        if dflash_raw is not None and not isinstance(dflash_raw, Mapping):
            raise ValueError(
                f"invalid DFlash config: dflash_config must be an object, got {dflash_raw!r}"
            )
        dflash = dict(dflash_raw or {})

        def pick(name: str, default: Any = None) -> tuple[str, Any]:
            # Upstream readers prefer dflash_config and fall back to the top level.
            if name in dflash and dflash[name] is not None:
                return f"dflash_config.{name}", dflash[name]
            value = raw.get(name)
            return name, default if value is None else value

        def top(name: str, default: Any = None) -> tuple[str, Any]:
            value = raw.get(name)
            return name, default if value is None else value

        layer_types = raw.get("layer_types") or []
        if not isinstance(layer_types, list):
            raise ValueError(
                f"invalid DFlash config: layer_types must be a list, got {layer_types!r}"
            )
        rotary = raw.get("partial_rotary_factor", 1.0)
        error = _check_number("partial_rotary_factor", rotary, 0.0, True)
        if error:
            raise ValueError(f"invalid DFlash config: {error}")

        unsupported = [f for f in _UNSUPPORTED_FIELDS if f in raw or f in dflash]
        projector = dflash.get("projector_type")
        if projector not in (None, "dflash"):
            unsupported.append(f"projector_type={projector!r}")
        if dflash.get("attention_mode") not in (None, "gqa", "mha"):
            unsupported.append(f"attention_mode={dflash['attention_mode']!r}")
        if rotary != 1.0:
            unsupported.append(f"partial_rotary_factor={rotary}")
        if dflash.get("use_swa"):
            unsupported.append(
                "dflash_config.use_swa (MiMo-style windows; use layer_types and sliding_window)"
            )
        if unsupported:
            raise ValueError(
                "unsupported DFlash variant (this runtime implements the DFlash drafter of "
                "ALGORITHMS.md §1 with windowed / causal layers only): " + ", ".join(unsupported)
            )

        missing = [
            name
            for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
            if raw.get(name) is None
        ]
        if pick("mask_token_id")[1] is None:
            missing.append("dflash_config.mask_token_id")
        if pick("target_layer_ids")[1] is None and pick("num_target_layers")[1] is None:
            missing.append("dflash_config.target_layer_ids (or num_target_layers)")
        if missing:
            raise ValueError("DFlash config is missing required fields: " + ", ".join(missing))

        fields = {
            "hidden_size": top("hidden_size"),
            "intermediate_size": top("intermediate_size"),
            "num_hidden_layers": top("num_hidden_layers"),
            "num_attention_heads": top("num_attention_heads"),
            "num_key_value_heads": top("num_key_value_heads"),
            "head_dim": top("head_dim"),
            "vocab_size": top("vocab_size"),
            "target_layer_ids": pick("target_layer_ids"),
            "mask_token_id": pick("mask_token_id"),
            "block_size": pick("block_size", 16),
            "num_target_layers": pick("num_target_layers"),
            "rms_norm_eps": top("rms_norm_eps", 1e-6),
            "hidden_act": top("hidden_act", "silu"),
            "attention_bias": top("attention_bias", False),
            "max_position_embeddings": top("max_position_embeddings", 32768),
            "initializer_range": top("initializer_range", 0.02),
            "input_embedding_scale": pick("input_embedding_scale", 1.0),
            "output_multiplier": pick("output_multiplier", 1.0),
            "final_logit_softcapping": pick("final_logit_softcapping"),
        }
        # Absent optional sizes default from the others (below); check only those given.
        present = {k: v for k, v in fields.items() if v[1] is not None or k in _OPTIONAL_FIELDS}
        errors = _field_errors(present)
        try:
            rope = _rope_from_dict(raw)
        except ValueError as e:
            errors.append(str(e))
        window, errors_window = _parse_window(raw)
        errors.extend(errors_window)
        is_causal = raw.get("is_causal")
        if is_causal is not None and not isinstance(is_causal, bool):
            errors.append(f"is_causal must be true, false or null, got {is_causal!r}")
        if errors:
            raise ValueError("invalid DFlash config: " + "; ".join(errors))
        n_layers = raw["num_hidden_layers"]
        if layer_types:
            types = list(layer_types)
        else:
            # Qwen3Config's derivation: layers from max_window_layers on slide, if windowed.
            first = raw.get("max_window_layers")
            first = _QWEN3_MAX_WINDOW_LAYERS if first is None else first
            error = _check_int("max_window_layers", first, 0)
            if error:
                raise ValueError(f"invalid DFlash config: {error}")
            types = [
                SLIDING_ATTENTION if window is not None and i >= first else FULL_ATTENTION
                for i in range(n_layers)
            ]
        if SLIDING_ATTENTION in types:
            error = _sliding_rope_error(raw, rope)
            if error:
                raise ValueError(f"unsupported DFlash variant: {error}")

        values = {k: v for k, (_, v) in fields.items()}
        for name in _FLOAT_FIELDS:
            if values[name] is not None:
                values[name] = float(values[name])
        hidden, heads = values["hidden_size"], values["num_attention_heads"]
        if values["target_layer_ids"] is None:
            # Older configs leave the ids implicit: one feature layer per drafter layer.
            values["target_layer_ids"] = default_target_layer_ids(
                values["num_target_layers"], values["num_hidden_layers"]
            )
        values["intermediate_size"] = values["intermediate_size"] or 4 * hidden
        values["num_key_value_heads"] = values["num_key_value_heads"] or heads
        values["head_dim"] = values["head_dim"] or hidden // heads
        return cls(
            **values,
            rope_parameters=rope,
            layer_types=types,
            sliding_window=window,
            is_causal=is_causal,
            extra={k: v for k, v in raw.items() if k not in _MODELED_KEYS},
            dflash_extra={k: v for k, v in dflash.items() if k not in _MODELED_DFLASH_KEYS},
        )

    def to_dict(self, dtype: str | None = None) -> dict[str, Any]:
        """The published ``config.json`` layout.

        RoPE is written both as ``rope_parameters`` (transformers 5) and as ``rope_theta`` /
        ``rope_scaling`` (transformers 4.x) so either reader finds it.
        """
        out: dict[str, Any] = {
            "architectures": ["DFlashDraftModel"],
            "model_type": "qwen3",
            "auto_map": {"AutoModel": "dflash.DFlashDraftModel"},
        }
        out.update(copy.deepcopy(self.extra))
        dflash: dict[str, Any] = copy.deepcopy(self.dflash_extra)
        dflash["mask_token_id"] = self.mask_token_id
        dflash["target_layer_ids"] = list(self.target_layer_ids)
        if self.input_embedding_scale != 1.0:
            dflash["input_embedding_scale"] = self.input_embedding_scale
        if self.output_multiplier != 1.0:
            dflash["output_multiplier"] = self.output_multiplier
        if self.final_logit_softcapping is not None:
            dflash["final_logit_softcapping"] = self.final_logit_softcapping
        rope = dict(self.rope_parameters)
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        out.update(
            {
                "attention_bias": self.attention_bias,
                "attention_dropout": 0.0,
                "block_size": self.block_size,
                "dflash_config": dflash,
                "head_dim": self.head_dim,
                "hidden_act": self.hidden_act,
                "hidden_size": self.hidden_size,
                "initializer_range": self.initializer_range,
                "intermediate_size": self.intermediate_size,
                "layer_types": list(self.layer_types or []),
                "max_position_embeddings": self.max_position_embeddings,
                "max_window_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads,
                "num_hidden_layers": self.num_hidden_layers,
                "num_key_value_heads": self.num_key_value_heads,
                "rms_norm_eps": self.rms_norm_eps,
                "rope_parameters": rope,
                "rope_scaling": None if self.rope_type == "default" else scaling,
                "rope_theta": self.rope_theta,
                # Qwen3Config keeps the window only with use_sliding_window = true.
                "sliding_window": self.sliding_window,
                "use_sliding_window": self.sliding_window is not None,
                "vocab_size": self.vocab_size,
            }
        )
        if self.is_causal is not None:
            out["is_causal"] = self.is_causal
        if self.num_target_layers is not None:
            out["num_target_layers"] = self.num_target_layers
        if dtype is not None:
            out["dtype"] = dtype
        return out

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> DFlashConfig:
        """The config in the JSON file at ``path``; every error names the path."""
        return cls.from_dict(read_json(path, "config"), source=os.fspath(path))

    def to_json_file(self, path: str | os.PathLike[str], dtype: str | None = None) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(dtype=dtype), f, indent=2, sort_keys=True)
            f.write("\n")

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_target_config(
        cls,
        target_config: Any,
        *,
        num_layers: int = 1,
        block_size: int = 16,
        mask_token_id: int | None = None,
        target_layer_ids: list[int] | None = None,
        num_feature_layers: int | None = None,
        intermediate_size: int | None = None,
        layer_types: list[str] | None = None,
        sliding_window: int | None = None,
        is_causal: bool | None = None,
    ) -> DFlashConfig:
        """A drafter config fitting an HF causal-LM config (``PretrainedConfig`` or dict).

        ``layer_types`` / ``sliding_window`` / ``is_causal`` make a windowed or causal drafter
        (default: every layer full attention, non-causal).

        Copies hidden size, heads, head dim, vocabulary, norm eps and RoPE settings from the
        target. ``num_feature_layers`` defaults to ``num_layers`` (as published drafters do);
        ``target_layer_ids`` default to :func:`default_target_layer_ids`. ``mask_token_id``
        defaults to ``vocab_size - 1``: a tokenizer-free fallback that is always a valid row of
        the target's embedding (published drafters use a dedicated ``<|MASK|>`` token instead,
        e.g. 151669 for Qwen3; any id works for a drafter trained with it).
        """
        if hasattr(target_config, "get_text_config"):
            target_config = target_config.get_text_config()
        raw = target_config.to_dict() if hasattr(target_config, "to_dict") else dict(target_config)
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        n_target = int(raw["num_hidden_layers"])
        vocab = int(raw["vocab_size"])
        k = num_layers if num_feature_layers is None else num_feature_layers
        ids = (
            list(target_layer_ids)
            if target_layer_ids is not None
            else default_target_layer_ids(n_target, k)
        )
        return cls(
            hidden_size=hidden,
            intermediate_size=int(intermediate_size or raw.get("intermediate_size") or 4 * hidden),
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            vocab_size=vocab,
            target_layer_ids=ids,
            mask_token_id=vocab - 1 if mask_token_id is None else int(mask_token_id),
            block_size=block_size,
            num_target_layers=n_target,
            rms_norm_eps=float(raw.get("rms_norm_eps") or raw.get("layer_norm_eps") or 1e-6),
            hidden_act="silu",
            attention_bias=False,
            max_position_embeddings=int(raw.get("max_position_embeddings") or 32768),
            initializer_range=float(raw.get("initializer_range") or 0.02),
            rope_parameters=_rope_from_dict(raw),
            layer_types=None if layer_types is None else list(layer_types),
            sliding_window=sliding_window,
            is_causal=is_causal,
        )
