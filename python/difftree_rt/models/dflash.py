"""DFlash block-diffusion drafter (ALGORITHMS.md §1) as a pure-PyTorch module.

Vocabulary: B batch, S block size (slot 0 = the bonus token, slots 1..S-1 = mask tokens),
L = S - 1 draft depth, V vocabulary, H query heads, Hkv key/value heads, D head dim,
T context rows, F = k * hidden feature width (k = number of target feature layers).

One drafting round for a request whose committed length is ``start``:

1. The features of the rows committed since the last round (target layer outputs of
   ``target_layer_ids`` concatenated, [B, n_new, F]) are fused, ``ctx = RMSNorm(fc(features))``,
   and every layer's k/v projections of ``ctx`` are appended to :class:`DFlashCache` at
   positions ``start - n_new .. start - 1`` (context row t sits at position t).
2. The block ``[b, M, ..., M]`` at positions ``start .. start + S - 1`` goes through the decoder
   layers; queries come from block rows only, keys/values from ``[ctx rows ; block rows]``;
   attention is non-causal. Context rows never pass through an MLP, so their K/V are a pure
   function of the features and can be cached.
3. Final norm, slot 0 dropped, target ``lm_head`` -> logits [B, L, V] (row j is depth j + 1).

Block rows are written to scratch space after the committed rows and never counted in the
cache length, so nothing needs truncating between rounds.

Drafter variants (:class:`DFlashConfig` ``layer_types`` / ``sliding_window`` / ``is_causal``,
the reference drafter's rule, docs/NOTES.md "Drafter variants (issue 16)"): in a layer with a
window W a query at position q sees keys with ``q - k < W`` (and ``k - q < W`` when not
causal); a causal layer sees keys with ``k <= q``. A windowed layer keeps only a ring of
``W + 2S`` rows of context in the cache (:mod:`.dflash_cache`).

Reading and writing checkpoint directories lives in :mod:`.dflash_checkpoint`, the layers in
:mod:`.dflash_layers`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .dflash_cache import DFlashCache, ring_positions, write_rows
from .dflash_checkpoint import load_drafter, save_drafter
from .dflash_config import DFlashConfig, default_target_layer_ids
from .dflash_layers import DecoderLayer, RMSNorm, Rotary, and_rule, attend_rule

__all__ = [
    "DFlashCache",
    "DFlashConfig",
    "DFlashDrafter",
    "default_target_layer_ids",
    "extract_features",
]


# ---------------------------------------------------------------------------------------------
# Feature extraction
# ---------------------------------------------------------------------------------------------
def extract_features(
    hidden_states: Sequence[torch.Tensor], target_layer_ids: Sequence[int]
) -> torch.Tensor:
    """Concatenate the drafter's feature layers from an HF ``hidden_states`` tuple.

    ``hidden_states`` is what an HF model returns with ``output_hidden_states=True``: the
    embedding output first, then one [B, T, hidden] tensor per decoder layer. The feature of
    target layer j is that layer's output, ``hidden_states[j + 1]``; features are concatenated
    along the hidden dimension in config order -> [B, T, k * hidden].
    """
    n = len(hidden_states)
    bad = [j for j in target_layer_ids if not 0 <= j + 1 < n]
    if bad:
        raise ValueError(
            f"target_layer_ids {bad} out of range: hidden_states has {n} entries "
            f"(embeddings + {n - 1} layers)"
        )
    return torch.cat([hidden_states[j + 1] for j in target_layer_ids], dim=-1)


# ---------------------------------------------------------------------------------------------
# Building blocks (Qwen3-style)
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Drafter
# ---------------------------------------------------------------------------------------------
class DFlashDrafter(nn.Module):
    """DFlash drafter: Qwen3-style layers over fused target features; no embedding, no head.

    The target's ``embed_tokens`` and ``lm_head`` are attached with :meth:`bind` (held by
    reference, never registered as submodules, never saved). Parameter names match the
    published checkpoints: ``fc.weight``, ``hidden_norm.weight``, ``norm.weight`` and
    ``layers.N.{input_layernorm, post_attention_layernorm}.weight``,
    ``layers.N.self_attn.{q,k,v,o}_proj.weight``, ``layers.N.self_attn.{q,k}_norm.weight``,
    ``layers.N.mlp.{gate,up,down}_proj.weight``.
    """

    def __init__(self, config: DFlashConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.fc = nn.Linear(config.feature_size, config.hidden_size, bias=False)
        self.hidden_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = Rotary(config)
        # (embedding, lm_head) of the bound target; a tuple so nn.Module does not register them.
        self._target_modules: tuple[nn.Module, nn.Module] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def mask_token_id(self) -> int:
        return self.config.mask_token_id

    @property
    def target_layer_ids(self) -> list[int]:
        return list(self.config.target_layer_ids)

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    @property
    def is_bound(self) -> bool:
        return self._target_modules is not None

    # ------------------------------------------------------------------ construction
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random init: linears ~ N(0, initializer_range), biases 0, norms 1."""
        std = self.config.initializer_range
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    w = module.weight
                    if generator is not None and generator.device != w.device:
                        # Draw where the generator lives (e.g. a CPU generator while the
                        # default device is CUDA), so a seed gives the same weights anywhere.
                        draw = torch.empty(w.shape, dtype=w.dtype, device=generator.device)
                        w.copy_(draw.normal_(0.0, std, generator=generator))
                    else:
                        w.normal_(0.0, std, generator=generator)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, RMSNorm):
                    module.weight.fill_(1.0)

    @classmethod
    def for_target(
        cls,
        target: nn.Module,
        num_layers: int = 1,
        block_size: int = 16,
        mask_token_id: int | None = None,
        *,
        target_layer_ids: list[int] | None = None,
        num_feature_layers: int | None = None,
        intermediate_size: int | None = None,
        layer_types: list[str] | None = None,
        sliding_window: int | None = None,
        is_causal: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> DFlashDrafter:
        """A randomly initialised drafter fitting HF causal LM ``target``, already bound.

        Hidden size, heads, head dim, vocabulary, norm eps and RoPE come from the target's
        config; ``target_layer_ids`` default to :func:`default_target_layer_ids` with
        ``num_feature_layers`` (default ``num_layers``) layers; ``mask_token_id`` defaults to
        ``vocab_size - 1`` (tokenizer-free fallback, see :meth:`DFlashConfig.for_target_config`).
        ``layer_types`` / ``sliding_window`` / ``is_causal`` make a windowed or causal drafter.
        The drafter takes the target's dtype and device.
        """
        config = DFlashConfig.for_target_config(
            target.config,
            num_layers=num_layers,
            block_size=block_size,
            mask_token_id=mask_token_id,
            target_layer_ids=target_layer_ids,
            num_feature_layers=num_feature_layers,
            intermediate_size=intermediate_size,
            layer_types=layer_types,
            sliding_window=sliding_window,
            is_causal=is_causal,
        )
        drafter = cls(config)
        drafter.reset_parameters(generator)
        weight = target.get_input_embeddings().weight
        drafter.to(device=weight.device, dtype=weight.dtype)
        return drafter.bind(target)

    # ------------------------------------------------------------------ target binding
    def check_target(self, target: nn.Module) -> list[str]:
        """Every way ``target`` does not fit this drafter, one line per field (empty if it fits)."""
        cfg = target.config
        if hasattr(cfg, "get_text_config"):
            cfg = cfg.get_text_config()
        c = self.config
        errors: list[str] = []

        def mismatch(field: str, expected: Any, got: Any) -> None:
            errors.append(f"{field}: expected {expected} (target), got {got} (drafter)")

        t_hidden = int(cfg.hidden_size)
        t_vocab = int(cfg.vocab_size)
        t_layers = int(cfg.num_hidden_layers)
        if c.hidden_size != t_hidden:
            mismatch("hidden_size", t_hidden, c.hidden_size)
        if c.vocab_size != t_vocab:
            mismatch("vocab_size", t_vocab, c.vocab_size)
        if c.num_target_layers is not None and c.num_target_layers != t_layers:
            mismatch("num_target_layers", t_layers, c.num_target_layers)
        bad_ids = [i for i in c.target_layer_ids if not 0 <= i < t_layers]
        if bad_ids:
            errors.append(
                f"target_layer_ids: expected ids in [0, {t_layers}) (target has {t_layers} "
                f"layers), got {c.target_layer_ids} (out of range: {bad_ids})"
            )
        embed = target.get_input_embeddings() if hasattr(target, "get_input_embeddings") else None
        head = target.get_output_embeddings() if hasattr(target, "get_output_embeddings") else None
        rows = t_vocab
        if embed is None or getattr(embed, "weight", None) is None:
            errors.append("embed_tokens: target has no input embedding (get_input_embeddings)")
        else:
            rows = min(rows, int(embed.weight.shape[0]))
            if c.hidden_size == t_hidden and int(embed.weight.shape[1]) != c.hidden_size:
                mismatch("embed_tokens width", int(embed.weight.shape[1]), c.hidden_size)
        if head is None:
            errors.append("lm_head: target has no output embedding (get_output_embeddings)")
        if not 0 <= c.mask_token_id < rows:
            errors.append(
                f"mask_token_id: expected an id in [0, {rows}) (target vocabulary), "
                f"got {c.mask_token_id} (drafter)"
            )
        return errors

    def bind(self, target: nn.Module) -> DFlashDrafter:
        """Attach ``target``'s embedding and LM head after checking that the drafter fits.

        Raises one ``ValueError`` listing every mismatch (hidden size, vocabulary,
        ``num_target_layers``, feature-layer range, mask id), each as expected vs got.
        """
        errors = self.check_target(target)
        if errors:
            raise ValueError(
                "DFlash drafter does not fit the target model:\n  - " + "\n  - ".join(errors)
            )
        head = target.get_output_embeddings()
        assert head is not None  # checked above
        self._target_modules = (target.get_input_embeddings(), head)
        return self

    def unbind(self) -> None:
        self._target_modules = None

    def _bound(self) -> tuple[nn.Module, nn.Module]:
        if self._target_modules is None:
            raise RuntimeError("DFlashDrafter is not bound to a target: call drafter.bind(target)")
        return self._target_modules

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token ids [B, Q] -> block input rows [B, Q, hidden] from the target's embedding.

        Uses the raw embedding table (times ``input_embedding_scale``), not the embedding
        module, so targets that scale inside the module (Gemma) match the reference drafter.
        """
        embedding = self._bound()[0]
        rows = F.embedding(token_ids, embedding.weight)  # type: ignore[arg-type]
        if self.config.input_embedding_scale != 1.0:
            rows = rows * self.config.input_embedding_scale
        return rows.to(self.dtype)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden [B, L, hidden] -> logits [B, L, V] through the target lm_head."""
        logits = self._bound()[1](hidden)
        if self.config.output_multiplier != 1.0:
            logits = logits * self.config.output_multiplier
        cap = self.config.final_logit_softcapping
        if cap is not None and cap > 0:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def extract_features(self, outputs: Any) -> torch.Tensor:
        """HF output (with ``hidden_states``) or the tuple itself -> features [B, T, F]."""
        hidden_states = getattr(outputs, "hidden_states", outputs)
        if hidden_states is None:
            raise ValueError(
                "model output has no hidden_states: call with output_hidden_states=True"
            )
        return extract_features(hidden_states, self.config.target_layer_ids)

    def make_block(self, bonus: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """bonus token ids [B] -> block ids [B, S] = [bonus, mask, ..., mask]."""
        size = self.block_size if size is None else size
        block = torch.full(
            (bonus.shape[0], size), self.mask_token_id, dtype=torch.long, device=bonus.device
        )
        block[:, 0] = bonus
        return block

    # ------------------------------------------------------------------ input checks
    def _check_block(self, block_ids: torch.Tensor) -> None:
        if block_ids.dim() != 2:
            raise ValueError(f"block_ids must be [B, S], got shape {tuple(block_ids.shape)}")
        if block_ids.dtype.is_floating_point or block_ids.dtype == torch.bool:
            raise ValueError(f"block_ids must be integer token ids, got dtype {block_ids.dtype}")
        if not 1 <= block_ids.shape[1] <= self.block_size:
            raise ValueError(
                f"block length must be in [1, block_size={self.block_size}], "
                f"got {block_ids.shape[1]}"
            )

    def _check_features(self, features: torch.Tensor, batch: int) -> None:
        width = self.config.feature_size
        if features.dim() != 3 or features.shape[0] != batch or features.shape[2] != width:
            raise ValueError(
                f"features must be [B={batch}, n, F={width}] "
                f"({self.config.num_feature_layers} target layers x hidden "
                f"{self.config.hidden_size}), got shape {tuple(features.shape)}"
            )
        if features.dtype != self.dtype:
            raise ValueError(
                f"features dtype {features.dtype} does not match drafter dtype {self.dtype}"
            )
        if features.device != self.device:
            raise ValueError(f"features are on {features.device}, drafter is on {self.device}")

    # ------------------------------------------------------------------ dense forward
    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, T, F] -> context rows ``RMSNorm(fc(features))`` [B, T, hidden]."""
        return self.hidden_norm(self.fc(features))

    def forward(
        self,
        block_ids: torch.Tensor,
        features: torch.Tensor,
        block_positions: torch.Tensor,
        context_positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Stateless forward over explicit rows (reference path and training).

        Args:
            block_ids: [B, Q] token ids of the query rows (one or several blocks).
            features: [B, T, F] context features.
            block_positions: [B, Q] absolute positions of the query rows.
            context_positions: [B, T]; default ``0..T-1``.
            attention_mask: bool, True = may attend; [B, Q, T + Q] or [Q, T + Q] over
                ``[context rows ; query rows]``. Default: everything visible (one block).
                Each layer's own window / causal rule (by position) applies on top.

        Returns:
            Final-normed hidden states [B, Q, hidden] for every query row (nothing dropped).
        """
        if block_ids.dim() != 2:
            raise ValueError(f"block_ids must be [B, Q], got shape {tuple(block_ids.shape)}")
        batch, q_len = block_ids.shape
        self._check_features(features, batch)
        t_len = features.shape[1]
        if context_positions is None:
            context_positions = torch.arange(t_len, device=features.device).expand(batch, t_len)
        mask = None
        if attention_mask is not None:
            if attention_mask.shape[-2:] != (q_len, t_len + q_len):
                raise ValueError(
                    f"attention_mask must end in [Q={q_len}, T+Q={t_len + q_len}], "
                    f"got {tuple(attention_mask.shape)}"
                )
            mask = attention_mask.to(torch.bool)
            mask = mask[:, None] if mask.dim() == 3 else mask[None, None]
        ctx = self.fuse(features)
        q_pos = block_positions.expand(batch, q_len)
        k_pos = torch.cat([context_positions.expand(batch, t_len), q_pos], dim=1)
        cos_c, sin_c = self.rotary_emb(context_positions, self.dtype)
        cos_b, sin_b = self.rotary_emb(q_pos, self.dtype)
        h = self.embed(block_ids)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            k_ctx, v_ctx = attn.key_value(ctx, cos_c, sin_c)
            x = layer.input_layernorm(h)
            k_blk, v_blk = attn.key_value(x, cos_b, sin_b)
            q = attn.query(x, cos_b, sin_b)
            k = torch.cat([k_ctx, k_blk], dim=2)
            v = torch.cat([v_ctx, v_blk], dim=2)
            rule = attend_rule(q_pos, k_pos, self.config.layer_window(i), self.layer_causal(i))
            layer_mask = mask
            if rule is not None:
                layer_mask = rule[:, None] if mask is None else mask & rule[:, None]
            h = h + attn.attend(q, k, v, layer_mask)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.norm(h)

    # ------------------------------------------------------------------ cached drafting
    # Every per-round value stays on the device and every shape is fixed by host constants
    # (the appended row count n, the block size S, the key span, the ring sizes), so the
    # engine's round (engine/round.py) runs with no host read, eagerly or captured in a CUDA
    # graph and replayed (engine/runner.py).
    def layer_causal(self, layer: int) -> bool:
        """Whether drafter layer ``layer`` attends causally (:meth:`DFlashConfig.layer_causal`)."""
        return self.config.layer_causal(layer)

    def ring_size(self, layer: int) -> int | None:
        """The ring a windowed layer keeps its context in: ``W + 2S`` rows (the window, the
        block written in place, and S rows a crop may roll back); None for a full layer."""
        window = self.config.layer_window(layer)
        return None if window is None else window + 2 * self.block_size

    def cache_rows(self, capacity: int, ring: bool = True) -> list[int]:
        """Rows per request and KV head that :meth:`new_cache` stores for each layer: the
        capacity for a full layer, ``ring_size + 1`` for a windowed one (when smaller)."""
        return [capacity if r is None else r + 1 for r in self._rings(capacity, ring)]

    def _rings(self, capacity: int, ring: bool) -> list[int | None]:
        rings: list[int | None] = []
        for i in range(self.config.num_hidden_layers):
            size = self.ring_size(i) if ring else None
            # A ring no smaller than the full cache saves nothing: store in full (masked).
            rings.append(size if size is not None and size + 1 < capacity else None)
        return rings

    def new_cache(self, batch_size: int = 1, capacity: int = 256, ring: bool = True) -> DFlashCache:
        """An empty context cache of ``capacity`` rows per request (fixed: it never grows).

        Windowed layers keep a ring of :meth:`ring_size` rows instead (whatever the capacity),
        unless ``ring`` is False (full storage under the window mask: same drafts).
        """
        c = self.config
        rings = self._rings(capacity, ring)
        return DFlashCache(
            c.num_hidden_layers,
            batch_size,
            c.num_key_value_heads,
            c.head_dim,
            capacity,
            self.dtype,
            self.device,
            rings=rings,
            crop_slack=self.block_size + 1 if any(r is not None for r in rings) else None,
        )

    @torch.no_grad()
    def append_context(
        self,
        cache: DFlashCache,
        features: torch.Tensor,
        num_new: torch.Tensor | None = None,
    ) -> None:
        """Append newly committed rows' features [B, n, F] to ``cache``; no host read.

        Row t of request b lands at position ``lengths[b] + t``. All n rows are written; rows
        past ``num_new[b]`` are padding that lands in scratch past the new length (overwritten
        by the block or the next append), and ``lengths += clamp(num_new, 0, n)`` in place.
        A ring layer keeps only the last ``R`` real rows (the rest go to its trash row).

        Args:
            cache: the request's :class:`DFlashCache`; needs ``max(lengths) + n <= capacity``.
            features: [B, n, F] in the drafter's dtype (e.g. the verify features along the
                accepted path, padded to L + 1 rows), in position order.
            num_new: [B] integer, real rows per request; None: all n rows are real.
        """
        self._check_features(features, cache.batch_size)
        n = features.shape[1]
        if n == 0:
            return
        if cache.length_floor + n > cache.capacity:
            raise ValueError(
                f"appending {n} rows to a context of at least {cache.length_floor} rows "
                f"overflows the cache capacity {cache.capacity} (fixed: size new_cache for "
                "the longest context plus the block)"
            )
        ctx = self.fuse(features)
        positions = cache.lengths[:, None] + torch.arange(n, device=features.device)
        count = None if num_new is None else num_new.to(cache.lengths).clamp(0, n)
        new_len = cache.lengths + (n if count is None else count)
        ring_slots: dict[int, torch.Tensor] = {}
        cos, sin = self.rotary_emb(positions, self.dtype)
        for i, layer in enumerate(self.layers):
            k, v = layer.self_attn.key_value(ctx, cos, sin)
            ring = cache.rings[i]
            slots = positions
            if ring is not None:
                if ring not in ring_slots:
                    # Keep the last R real rows: distinct slots; padding and older rows -> trash.
                    keep = positions >= new_len[:, None] - ring
                    if count is not None:
                        keep = keep & (positions < new_len[:, None])
                    ring_slots[ring] = torch.where(keep, positions % ring, ring)
                slots = ring_slots[ring]
            write_rows(cache.keys[i], k, slots)
            write_rows(cache.values[i], v, slots)
        if count is None:
            cache.lengths += n
            cache.length_floor += n
        else:
            cache.lengths += count

    def _cached_layers(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys_for: Any,
    ) -> torch.Tensor:
        """The drafter layers over query rows h [B, Q, hidden]. ``keys_for(i, k, v)`` takes
        layer i's query-row K/V [B, Hkv, Q, D], stores them where the layer reads them and
        returns that layer's keys, values [B, Hkv, K, D] and mask [B, 1, Q, K]. Returns h
        (not final-normed)."""
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            k_blk, v_blk = attn.key_value(x, cos, sin)
            k, v, mask = keys_for(i, k_blk, v_blk)
            q = attn.query(x, cos, sin)
            h = h + attn.attend(q, k, v, mask)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h

    @torch.no_grad()
    def draft(
        self, block_ids: torch.Tensor, cache: DFlashCache, span: int | None = None
    ) -> torch.Tensor:
        """One drafting round over the cache's context: the block at positions
        ``lengths[b] + j``, logits out. Append the round's new rows first (:meth:`append_context`).

        The block's K/V go to scratch rows ``lengths[b] .. lengths[b] + S - 1`` (never counted
        in the context; in a ring layer, ring rows ``(lengths[b] + j) mod R``). Keys are cache
        rows ``[0, span)`` masked to ``[0, lengths[b] + S)`` (a ring layer: its whole ring), so
        the shapes depend only on ``span``, never on device values.

        Args:
            block_ids: [B, S] with slot 0 = bonus token, slots 1.. = ``mask_token_id``
                (S <= ``block_size``; see :meth:`make_block`).
            cache: the requests' context rows (``lengths`` = committed length per request).
            span: key rows scanned; requires ``max(lengths) + S <= span <= capacity`` (a block
                row past ``span`` would be invisible; only what host values prove is checked).
                None: the whole capacity, always correct but every round pays for it; the
                engine passes exact (eager) or bucketed (CUDA graphs) spans.

        Returns:
            logits [B, L, V], L = S - 1; row j is the draft distribution at depth j + 1,
            position ``lengths[b] + j + 1``.
        """
        self._check_block(block_ids)
        batch, s_len = block_ids.shape
        if batch != cache.batch_size:
            raise ValueError(f"block batch {batch} != cache batch {cache.batch_size}")
        if span is None:
            span = cache.capacity
        if not 0 < span <= cache.capacity:
            raise ValueError(f"span must be in [1, capacity={cache.capacity}], got {span}")
        if cache.length_floor + s_len > span:
            raise ValueError(
                f"span {span} cannot hold a context of at least {cache.length_floor} rows plus "
                f"the {s_len} block rows (capacity {cache.capacity})"
            )
        device = block_ids.device
        positions = cache.lengths[:, None] + torch.arange(s_len, device=device)
        newest = cache.lengths + s_len
        masks: dict[tuple[int | None, int | None, bool], torch.Tensor] = {}

        def keys_for(
            i: int, k_blk: torch.Tensor, v_blk: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            ring, window, causal = cache.rings[i], self.config.layer_window(i), self.layer_causal(i)
            rows = span if ring is None else ring
            slots = positions if ring is None else positions % ring
            write_rows(cache.keys[i], k_blk, slots)
            write_rows(cache.values[i], v_blk, slots)
            key = (ring, window, causal)
            if key not in masks:
                if ring is None:  # row t holds position t
                    k_pos = torch.arange(span, device=device)[None].expand(batch, span)
                    valid = k_pos < newest[:, None]
                else:  # the ring after the block's write: positions [newest - R, newest)
                    k_pos = ring_positions(newest, ring)
                    valid = k_pos >= 0
                mask = valid[:, None, :].expand(batch, s_len, rows)
                masks[key] = and_rule(mask, attend_rule(positions, k_pos, window, causal))[:, None]
            return cache.keys[i][:, :, :rows], cache.values[i][:, :, :rows], masks[key]

        cos, sin = self.rotary_emb(positions, self.dtype)
        h = self._cached_layers(self.embed(block_ids), cos, sin, keys_for)
        # Slot 0 (the bonus token) predicts nothing new: drop it.
        return self.compute_logits(self.norm(h[:, 1:]))

    @torch.no_grad()
    def draft_branches(
        self, block_ids: torch.Tensor, cache: DFlashCache, *, span: int
    ) -> torch.Tensor:
        """Draft R blocks per request over the same committed context, in one batched forward
        (D²SD's second pass: each row re-drafts after its own visible prefix).

        The rows' block K/V go to scratch rows ``span .. span + R * S - 1`` (past the context;
        never part of it) and one attention over ``[context ; R blocks]`` lets row r see the
        context and its own block only, so the context K/V is read once, not copied per row.
        A ring layer attends ``[its ring ; R blocks]`` and writes nothing. Call after the
        round's context was appended (:meth:`append_context`).

        Args:
            block_ids: [B, R, S] (S <= ``block_size``); row r = ``[bonus, p_r visible tokens,
                mask, ..., mask]``; slot 0 sits at position ``lengths[b]``.
            cache: the requests' :class:`DFlashCache` holding context rows ``[0, lengths[b])``.
            span: key rows of the context, ``[0, span)`` masked to each request's ``lengths``;
                requires ``max(lengths) <= span`` and ``span + R * S <= capacity`` (only what
                host values prove is checked).

        Returns:
            logits [B, R, S - 1, V]; entry j of row r is depth j + 1 at position
            ``lengths[b] + j + 1`` (entries inside a row's visible prefix are meaningless).
        """
        if block_ids.dim() != 3:
            raise ValueError(f"block_ids must be [B, R, S], got shape {tuple(block_ids.shape)}")
        batch, rows, s_len = block_ids.shape
        if batch != cache.batch_size:
            raise ValueError(f"block batch {batch} != cache batch {cache.batch_size}")
        if rows < 1:
            raise ValueError("block_ids must hold at least one row (R >= 1)")
        self._check_block(block_ids.reshape(batch * rows, s_len))
        device = block_ids.device
        q_len = rows * s_len
        if not 0 < span <= cache.capacity - q_len:
            raise ValueError(
                f"span must be in [1, capacity - R*S = {cache.capacity - q_len}], got {span}"
            )
        if cache.length_floor > span:
            raise ValueError(f"span {span} < the context of at least {cache.length_floor} rows")
        positions = cache.lengths[:, None] + torch.arange(s_len, device=device)
        positions = positions.repeat(1, rows)  # [B, R*S], row-major
        # Keys: the context (rows [0, span), a request sees its first lengths[b]; or a ring),
        # then the R blocks (at scratch rows span + r*S + j); a block row sees its own block.
        row_of = torch.arange(q_len, device=device) // s_len
        own = (row_of[:, None] == row_of[None, :])[None].expand(batch, -1, -1)  # [B, R*S, R*S]
        slots = (span + torch.arange(q_len, device=device))[None].expand(batch, q_len)
        masks: dict[tuple[int | None, int | None, bool], torch.Tensor] = {}

        def keys_for(
            i: int, k_blk: torch.Tensor, v_blk: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            ring, window, causal = cache.rings[i], self.config.layer_window(i), self.layer_causal(i)
            key = (ring, window, causal)
            if key not in masks:
                if ring is None:
                    ctx_pos = torch.arange(span, device=device)[None].expand(batch, span)
                    valid = ctx_pos < cache.lengths[:, None]
                else:  # the context part of the ring: positions [lengths - R, lengths)
                    ctx_pos = ring_positions(cache.lengths, ring)
                    valid = ctx_pos >= 0
                ctx_mask = valid[:, None, :].expand(batch, q_len, valid.shape[1])
                ctx_mask = and_rule(ctx_mask, attend_rule(positions, ctx_pos, window, causal))
                blk_mask = and_rule(own, attend_rule(positions, positions, window, causal))
                masks[key] = torch.cat([ctx_mask, blk_mask], dim=2)[:, None]
            if ring is None:
                write_rows(cache.keys[i], k_blk, slots)
                write_rows(cache.values[i], v_blk, slots)
                end = span + q_len
                return cache.keys[i][:, :, :end], cache.values[i][:, :, :end], masks[key]
            k = torch.cat([cache.keys[i][:, :, :ring], k_blk], dim=2)
            v = torch.cat([cache.values[i][:, :, :ring], v_blk], dim=2)
            return k, v, masks[key]

        cos, sin = self.rotary_emb(positions, self.dtype)
        h = self.embed(block_ids.reshape(batch, q_len))
        h = self._cached_layers(h, cos, sin, keys_for)
        hidden = self.norm(h.reshape(batch, rows, s_len, -1)[:, :, 1:])
        logits = self.compute_logits(hidden.reshape(batch, rows * (s_len - 1), -1))
        return logits.reshape(batch, rows, s_len - 1, -1)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write ``config.json`` + ``model.safetensors`` in the published layout."""
        save_drafter(self, path)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> DFlashDrafter:
        """Load a drafter directory in the published layout (local files only).

        ``torch_dtype=None`` keeps the dtype stored in the safetensors file. Errors name the
        file and the field: a config field of the wrong type or out of range, a layer count
        or parameter shape that does not match the weights present (checked on the
        safetensors headers before any module is built or tensor read), missing or unexpected
        parameters (``ValueError``). Only files inside ``path`` are read: a shard the index
        names by an absolute path, through ``..`` or through a symlink leading out of the
        directory is refused (a Hugging Face cache snapshot's links into its repository's
        ``blobs`` folder excepted).
        """
        return load_drafter(cls, path, torch_dtype, device)
