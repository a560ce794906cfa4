"""Target adapter: any HF causal LM with standard decoder layers, on a static KV cache.

Vocabulary: B batch, T new tokens, N tree nodes (root included), L tree depth, V vocab,
H heads, D head dim, S_max cache capacity, W sliding window, T_max rows of one forward,
F = k * hidden (k captured feature layers).

One adapter owns one :class:`StaticKVCache`. Every forward (prefill, AR decode, tree verify)
writes its T (or N) new rows at ``base_len + i`` and runs attention through the registered
``"difftree_tree"`` attention function (``tree_attention``): committed prefix unmasked + the new
rows causal (prefill/decode) or ancestor-only (verify). Prefill and decode advance ``base_len``;
verify does not, :meth:`TargetAdapter.commit` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .compiled import ForwardCompiler
from .linear_attention import linear_layers
from .static_cache import StaticKVCache
from .target_layers import ring_slots
from .target_support import check_target_model
from .tree_attention import CONTEXT_KWARG, TreeAttentionContext, register_hf_attention

__all__ = ["PREFILL_CHUNK", "TargetAdapter", "TargetOutput"]

#: Rows per prefill chunk on a target whose sliding-window layers keep rings (at least the
#: tree capacity): bounds the rings at ``W - 1 + max(T_max, PREFILL_CHUNK)`` rows.
PREFILL_CHUNK = 512

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@dataclass
class TargetOutput:
    """Result of one target forward.

    Attributes:
        logits: ``[B, T, V]`` (``[B, 1, V]`` with ``last_logits_only``).
        features: ``[B, T, F]`` hidden states of the feature layers concatenated in the requested
            order, or ``None`` when the adapter has no feature layers.
    """

    logits: Tensor
    features: Tensor | None = None


def _find_final_norm(model: nn.Module) -> nn.Module | None:
    """The decoder's final norm (``model.model.norm``), applied before the LM head."""
    for cand in (getattr(model, "model", None), model):
        norm = getattr(cand, "norm", None) if cand is not None else None
        if isinstance(norm, nn.Module):
            return norm
    return None


class TargetAdapter:
    """Wrap an HF causal LM for tree verification on a preallocated static KV cache.

    Args:
        model: an ``AutoModelForCausalLM``-style model (Qwen3, Llama, Qwen2, Mistral, ...) whose
            attention goes through transformers' ``AttentionInterface``. It is not modified:
            the attention implementation is switched only for the duration of adapter calls, so
            the model keeps working as a plain HF model.
        max_length: S_max, cache rows per request (prompt + generated + one tree).
        batch_size: B.
        feature_layers: 0-based decoder layer ids whose outputs are captured, concatenated in this
            order; ``None`` or empty captures nothing. Feature j equals HF ``hidden_states[j+1]``
            (for the last layer that is after the final norm, as HF reports it).
        validate: run value checks that need a device->host sync (index ranges in verify/commit).
            Shape checks always run. Turn off for graph capture.
        max_forward_rows: T_max, the most rows one verify / decode forward writes (the tree
            capacity). When given and the model has sliding-window layers, each of them keeps a
            ring of ``W - 1 + T_max`` rows instead of S_max (when smaller), and prefill runs in
            chunks of at most ``max(T_max, prefill_chunk)`` rows. None: every layer keeps S_max
            rows.
        prefill_chunk: rows per prefill chunk on a target with rings (see above; None:
            :data:`PREFILL_CHUNK`).
    """

    def __init__(
        self,
        model: nn.Module,
        max_length: int,
        batch_size: int = 1,
        feature_layers: Sequence[int] | None = None,
        *,
        validate: bool = True,
        max_forward_rows: int | None = None,
        prefill_chunk: int | None = None,
    ) -> None:
        geometry = check_target_model(model)
        config = model.config
        prefill_chunk = PREFILL_CHUNK if prefill_chunk is None else prefill_chunk
        sizes = [("max_length", max_length), ("batch_size", batch_size)]
        sizes += [("max_forward_rows", max_forward_rows), ("prefill_chunk", prefill_chunk)]
        for name, value in sizes:
            if name == "max_forward_rows" and value is None:
                continue  # optional: no bound on one forward's rows
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        num_layers = geometry.num_layers
        rows_cap = None
        if max_forward_rows is not None:
            rows_cap = min(max(max_forward_rows, prefill_chunk), max_length)
            if not any(
                ring_slots(spec.window, max_length, rows_cap) < max_length
                for spec in geometry.specs
            ):
                rows_cap = None  # no layer would keep a ring: nothing to bound
        layers = geometry.layers

        feats = [] if feature_layers is None else list(feature_layers)
        for j in feats:
            if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < num_layers:
                raise ValueError(
                    f"feature_layers: {j!r} is not a decoder layer id in [0, {num_layers}) "
                    f"(got {feats})"
                )

        param = next(model.parameters())

        self.model = model
        self.config = config
        self.feature_layers: list[int] = feats
        self.validate = validate
        self.device = param.device
        self.dtype = param.dtype
        self.num_layers = num_layers
        self.vocab_size: int = config.vocab_size
        self.hidden_size: int = config.hidden_size
        self._layers = layers
        # Gated-DeltaNet modules: they run the tree forward during adapter calls.
        self._linear_modules = [
            layer.linear_attn for spec, layer in zip(geometry.specs, layers, strict=True)
            if spec.linear is not None
        ]  # fmt: skip
        # HF reports the last layer's output after the final norm (hidden_states[-1] is tied to
        # last_hidden_state); capture it from the norm so "feature j = hidden_states[j+1]" holds.
        self._final_norm = _find_final_norm(model)
        if num_layers - 1 in feats and self._final_norm is None:
            raise ValueError(
                f"feature_layers: layer {num_layers - 1} (the last) needs the decoder's final norm "
                "(`model.model.norm`), which was not found"
            )
        self._attn_impl = register_hf_attention()
        if self.device.type == "cuda":
            # The CUDA tree-attention kernel serves verify/decode on the GPU (it declines shapes
            # and dtypes it does not support, which then run the PyTorch reference).
            from . import tree_attention_cuda

            tree_attention_cuda.enable()
        self.cache = StaticKVCache(
            list(geometry.specs),
            batch_size=batch_size,
            max_length=max_length,
            dtype=self.dtype,
            device=self.device,
            max_forward_rows=rows_cap,
        )
        # Tree size N of the last verify (commit needs one), None when no tree is pending.
        self._pending_nodes: int | None = None
        # Feature-layer outputs of the forward in flight, and the stable hooks that fill it.
        self._captured: dict[int, Tensor] = {}
        self._hooks = {j: self._capture_hook(j) for j in dict.fromkeys(feats)}
        #: Graph mode's compiled forwards (set by the round that serves this adapter), or None.
        self.compiler: ForwardCompiler | None = None

    # --------------------------------------------------------------------------------------------
    # Properties
    # --------------------------------------------------------------------------------------------
    @property
    def base_len(self) -> Tensor:
        """``[B]`` int32 on the device: committed tokens (KV rows) per request."""
        return self.cache.base_len

    @property
    def max_length(self) -> int:
        """S_max, the cache capacity in rows per request."""
        return self.cache.max_length

    @property
    def batch_size(self) -> int:
        return self.cache.batch_size

    @property
    def feature_dim(self) -> int:
        """F = len(feature_layers) * hidden_size (0 without feature layers)."""
        return len(self.feature_layers) * self.hidden_size

    # --------------------------------------------------------------------------------------------
    # Public API
    # --------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all context: ``base_len`` to 0 (the buffers are reused as is)."""
        self.cache.reset()
        self._pending_nodes = None

    @torch.no_grad()
    def prefill(
        self,
        input_ids: Tensor,
        *,
        last_logits_only: bool = False,
        lengths: Sequence[int] | None = None,
    ) -> TargetOutput:
        """Append T tokens per request causally after the committed context and commit them.

        Works for the first prompt and for later chunks (chunked prefill).

        Args:
            input_ids: ``[B, T]`` integer token ids.
            last_logits_only: return logits ``[B, 1, V]`` of the last row only (saves memory on
                long prompts); features are still returned for all T rows.
            lengths: optional per-request real lengths ``T_b`` (1..T, host ints) of a
                **right-padded** batch: request b's tokens are ``input_ids[b, :T_b]``, the rest
                is padding that is computed (causal attention keeps it invisible to the real
                rows) but not committed. With ``last_logits_only`` the logits row is each
                request's last real row ``T_b - 1``.

        Returns:
            logits ``[B, T, V]`` and features ``[B, T, F]`` (padding rows hold garbage).
            ``base_len += T`` (``+= T_b`` with ``lengths``).
        """
        ids = self._check_ids(input_ids, "input_ids")
        num_b, num_t = ids.shape
        lens = None if lengths is None else list(lengths)
        if lens is not None and (
            len(lens) != num_b
            or not all(
                isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= num_t for n in lens
            )
        ):
            raise ValueError(
                f"lengths must be {num_b} ints in [1, T={num_t}] (one per request), got {lens!r}"
            )
        cap = self.cache.max_forward_rows
        if cap is not None and num_t > cap:
            return self._prefill_chunks(ids, last_logits_only, lens, cap)
        if lens is None:
            return self._append(ids, "input_ids", last_logits_only)
        self._ensure_capacity(num_t, "input_ids")
        lens_t = torch.tensor(lens, dtype=torch.long, device=self.device)
        offsets = torch.arange(num_t, device=self.device)[None, :]
        keep = (lens_t - 1)[:, None] if last_logits_only else None
        out = self._forward(ids, offsets, None, None, logits_to_keep=keep, commit_rows=lens_t)
        self.cache.base_len.add_(lens_t.to(self.cache.base_len.dtype))
        self.cache.len_bound += max(lens)
        # An upper bound on max(base_len); exact when every request had the same length.
        self.cache.len_exact = self.cache.len_exact and min(lens) == max(lens)
        self._pending_nodes = None
        return out

    def _prefill_chunks(
        self, ids: Tensor, last_logits_only: bool, lens: list[int] | None, cap: int
    ) -> TargetOutput:
        # A prompt longer than one forward may write (the rings hold W - 1 + T_max rows): causal
        # chunks of at most `cap` rows, each committed before the next, as HF's own chunked
        # prefill does. Request b's chunk c holds its real tokens [c0, min(c1, T_b)).
        num_b, num_t = ids.shape
        self._ensure_capacity(num_t, "input_ids")
        full = [num_t] * num_b if lens is None else lens
        last = torch.tensor([n - 1 for n in full], device=self.device)
        logits: list[Tensor] = []
        feats: list[Tensor] = []
        for c0 in range(0, num_t, cap):
            c1 = min(num_t, c0 + cap)
            real = [max(0, min(n, c1) - c0) for n in full]
            offsets = torch.arange(c1 - c0, device=self.device)[None, :]
            # last_logits_only: one row per request reaches the LM head (its last real row,
            # clamped into this chunk), never [B, T, V] for a long prompt.
            keep = (last - c0).clamp(0, c1 - c0 - 1)[:, None] if last_logits_only else None
            real_t = torch.tensor(real, dtype=torch.long, device=self.device)
            out = self._forward(
                ids[:, c0:c1], offsets, None, None, logits_to_keep=keep, commit_rows=real_t
            )
            self.cache.base_len.add_(real_t.to(self.cache.base_len.dtype))
            self.cache.len_bound += max(real)
            logits.append(out.logits)
            if out.features is not None:
                feats.append(out.features)
        self.cache.len_exact = self.cache.len_exact and min(full) == max(full)
        self._pending_nodes = None
        if last_logits_only:  # request b's row comes from the chunk holding its last token
            rows = torch.cat(logits, dim=1)  # [B, chunks, V]
            all_logits = rows[torch.arange(num_b, device=self.device), last // cap][:, None]
        else:
            all_logits = torch.cat(logits, dim=1)
        return TargetOutput(logits=all_logits, features=torch.cat(feats, dim=1) if feats else None)

    @torch.no_grad()
    def decode(self, token: Tensor) -> TargetOutput:
        """AR step: append one token per request and commit it.

        Args:
            token: ``[B, 1]`` integer token ids.

        Returns:
            logits ``[B, 1, V]`` and features ``[B, 1, F]``. ``base_len += 1``.
        """
        ids = self._check_ids(token, "token")
        if ids.shape[1] != 1:
            raise ValueError(f"token must be [B={self.batch_size}, 1], got {tuple(token.shape)}")
        return self._append(ids, "token", False)

    def _append(self, ids: Tensor, arg: str, last_logits_only: bool) -> TargetOutput:
        # Causal append of T committed tokens: shared by prefill and AR decode.
        num_t = ids.shape[1]
        self._ensure_capacity(num_t, arg)
        offsets = torch.arange(num_t, device=self.device)[None, :]
        rows = torch.full((ids.shape[0],), num_t, dtype=torch.long, device=self.device)
        out = self._forward(
            ids, offsets, None, None, last_logits_only=last_logits_only, commit_rows=rows
        )
        self.cache.advance(num_t)
        self._pending_nodes = None
        return out

    @torch.no_grad()
    def verify(
        self,
        tree_tokens: Tensor,
        depth: Tensor,
        anc: Tensor | None,
        num_nodes: Tensor | None = None,
    ) -> TargetOutput:
        """Run the target on a draft tree without committing anything.

        Node i is written at cache row ``base_len + i``, sits at position ``base_len + depth[i]``
        and sees the committed prefix plus itself and its ancestors.

        Args:
            tree_tokens: ``[B, N]`` integer token per node (node 0 = root = bonus token).
            depth: ``[B, N]`` integer depth per node (root 0).
            anc: ``[B, N, ceil(N/32)]`` int32/uint32 ancestor-or-self bitmask, or ``None`` for a
                chain (causal; ``parent[i] = i - 1``).
            num_nodes: ``[B]`` valid nodes; rows ``>= num_nodes`` are padding (self-only ``anc``).
                ``None`` means all N.

        Returns:
            logits ``[B, N, V]`` and features ``[B, N, F]`` (padding rows hold garbage).
            ``base_len`` is unchanged until :meth:`commit`.
        """
        ids = self._check_ids(tree_tokens, "tree_tokens")
        num_b, num_n = ids.shape
        self._check_int(depth, "depth", (num_b, num_n))
        if anc is not None:
            words = (num_n + 31) // 32
            if anc.dtype not in (torch.int32, torch.uint32):
                raise ValueError(f"anc must be int32 or uint32, got {anc.dtype}")
            self._check_shape_device(anc, "anc", (num_b, num_n, words))
        if num_nodes is not None:
            self._check_int(num_nodes, "num_nodes", (num_b,))
            if self.validate:
                lo, hi = int(num_nodes.min()), int(num_nodes.max())
                if lo < 1 or hi > num_n:
                    raise ValueError(f"num_nodes must be in [1, N={num_n}], got [{lo}, {hi}]")
        if self.validate:
            d_lo, d_hi = int(depth.min()), int(depth.max())
            if d_lo < 0 or d_hi >= num_n:
                raise ValueError(f"depth must be in [0, N={num_n}), got [{d_lo}, {d_hi}]")
        self._ensure_capacity(num_n, "tree_tokens")
        out = self._forward(ids, depth.to(torch.long), anc, num_nodes)
        self._pending_nodes = num_n
        return out

    @torch.no_grad()
    def commit(self, path: Tensor, accepted: Tensor, active: Tensor | None = None) -> None:
        """Keep the accepted path of the last verified tree: move its K/V rows into place.

        Row ``base_len + path[b, j]`` moves to ``base_len + j`` for ``j = 0..accepted[b]`` in every
        layer (staged, so overlapping rows are safe), then ``base_len += accepted + 1``.

        Args:
            path: ``[B, L+1]`` integer node indices, ``path[:, 0] == 0``, strictly increasing up
                to ``accepted``; entries past ``accepted`` are ignored.
            accepted: ``[B]`` integer, accepted draft nodes (0..L).
            active: optional ``[B]`` bool: requests where it is False are left unchanged (graph
                mode runs finished requests' rounds as no-ops instead of branching on the host).
        """
        num_b = self.batch_size
        if path.dim() != 2 or path.shape[0] != num_b or path.shape[1] < 1:
            raise ValueError(f"path must be [B={num_b}, L+1] with L >= 0, got {tuple(path.shape)}")
        self._check_int(path, "path", tuple(path.shape))
        self._check_int(accepted, "accepted", (num_b,))
        num_n = self._pending_nodes
        if num_n is None:
            raise ValueError("commit() needs a preceding verify() (no tree is pending)")
        path_len = path.shape[1]
        if path_len > num_n:
            raise ValueError(
                f"path has {path_len} entries but the verified tree has N={num_n} nodes"
            )
        if self.validate:
            self._check_path_values(path, accepted, num_n)
        if active is not None:
            self._check_shape_device(active, "active", (num_b,))
        self.cache.commit(path, accepted, active)
        self._pending_nodes = None
        if self.validate:
            # Values were synced for validation anyway: keep the host bound tight.
            self.cache.sync_len_bound()

    @staticmethod
    def gather_path(features: Tensor, path: Tensor) -> Tensor:
        """Rows of a verify output along the accepted path (e.g. the drafter's next context).

        Args:
            features: ``[B, N, F]`` (or logits ``[B, N, V]``) from :meth:`verify`.
            path: ``[B, L+1]`` node indices; entries past ``accepted`` give unused rows.

        Returns:
            ``[B, L+1, F]``: row j is ``features[b, path[b, j]]``.
        """
        idx = path.to(device=features.device, dtype=torch.long).clamp(0, features.shape[1] - 1)
        return torch.gather(features, 1, idx[:, :, None].expand(-1, -1, features.shape[-1]))

    # --------------------------------------------------------------------------------------------
    # Internals
    # --------------------------------------------------------------------------------------------
    def _forward(
        self,
        ids: Tensor,
        pos_offsets: Tensor,
        anc: Tensor | None,
        num_nodes: Tensor | None,
        *,
        last_logits_only: bool = False,
        logits_to_keep: Tensor | None = None,
        commit_rows: Tensor | None = None,
    ) -> TargetOutput:
        # commit_rows: [B] rows a causal forward commits (linear-attention states advance in
        # the forward); None for a verify.
        kwargs: dict[str, Any] = {}
        head_hook = None
        if last_logits_only:
            kwargs["logits_to_keep"] = 1
        elif logits_to_keep is not None:
            # One row per request ([B, 1] positions), gathered right before the LM head: HF's
            # tensor form of `logits_to_keep` is version-dependent (transformers 5.17 indexes
            # hidden[:, rows] -> [B, B, 1, V]; later versions gather along the sequence).
            head = self.model.get_output_embeddings()
            rows = logits_to_keep[..., None]

            def gather_rows(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
                return (torch.take_along_dim(args[0], rows, dim=1), *args[1:])

            head_hook = head.register_forward_pre_hook(gather_rows)
            kwargs["logits_to_keep"] = 0  # every row reaches the head, which keeps `rows`
        span = self.cache.fixed_span
        try:
            with self._attention_impl(), self._capture(), linear_layers(self._linear_modules):
                if self.compiler is not None and span is not None and not kwargs:
                    # Graph mode: static shapes per (T, span, tree kind), compiled once each.
                    key = ("target", ids.shape[1], span, anc is None, num_nodes is None,
                           commit_rows is None)  # fmt: skip
                    args = (ids, pos_offsets, anc, num_nodes, commit_rows, kwargs)
                    logits, features = self.compiler.call(key, self._model_forward, *args)
                else:
                    logits, features = self._model_forward(
                        ids, pos_offsets, anc, num_nodes, commit_rows, kwargs
                    )
        finally:
            self.cache.end_write()
            if head_hook is not None:
                head_hook.remove()
        return TargetOutput(logits=logits, features=features)

    def _model_forward(
        self,
        ids: Tensor,
        pos_offsets: Tensor,
        anc: Tensor | None,
        num_nodes: Tensor | None,
        commit_rows: Tensor | None,
        kwargs: dict[str, Any],
    ) -> tuple[Tensor, Tensor | None]:
        # The model call itself (what graph mode compiles): row i of request b goes to cache
        # row base_len[b] + i at position base_len[b] + pos_offsets[b, i] (i for causal
        # appends, depth[i] for trees). All from device tensors: no sync.
        num_t = ids.shape[1]
        base = self.cache.base_len.to(torch.long)
        positions = base[:, None] + pos_offsets
        self.cache.begin_write(base[:, None] + torch.arange(num_t, device=self.device))
        ctx = TreeAttentionContext(
            prefix_len=base,
            tree_anc=anc,
            num_nodes=num_nodes,
            depth=pos_offsets if anc is not None else None,
            kv_bound=self.cache.key_span(),
            full_rows=self.cache.max_length,
            num_rows=num_t,
            commit_rows=commit_rows,
        )
        captured = self._captured
        captured.clear()
        out = self.model(
            input_ids=ids,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            **{CONTEXT_KWARG: ctx},
            **kwargs,
        )
        logits = out.logits if hasattr(out, "logits") else out[0]
        features = None
        if self.feature_layers:
            features = torch.cat([captured[j] for j in self.feature_layers], dim=-1)
        captured.clear()
        return logits, features

    @contextlib.contextmanager
    def _attention_impl(self) -> Iterator[None]:
        # Switch only for this call so the wrapped model stays a plain HF model elsewhere
        # (e.g. `model.generate` as the lossless reference on the same object).
        config = self.config
        previous = config._attn_implementation
        config._attn_implementation = self._attn_impl
        try:
            yield
        finally:
            config._attn_implementation = previous

    def _capture_hook(self, j: int) -> Any:
        # One hook per feature layer, made once: a compiled forward traces the same function
        # every call (the hook stores into the adapter's own dict).
        captured = self._captured

        def hook(_mod: nn.Module, _args: Any, output: Any) -> None:
            captured[j] = output[0] if isinstance(output, tuple) else output

        return hook

    @contextlib.contextmanager
    def _capture(self) -> Iterator[None]:
        # Forward hooks on the requested decoder layers: their output is HF hidden_states[j + 1],
        # without asking the model for every layer's hidden states.
        # The last layer is read after the final norm, as HF reports it.
        handles = []
        last = self.num_layers - 1
        for j, hook in self._hooks.items():
            module = self._final_norm if j == last else self._layers[j]
            assert module is not None  # checked in __init__
            handles.append(module.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _ensure_capacity(self, num_new: int, arg: str) -> None:
        # Checked against the host bound (no sync); only a loose bound that would overflow
        # (commits without validation) is re-read from the device.
        cache, cap = self.cache, self.max_length
        if cache.fixed_span is not None:
            return  # graph mode: the round runner checked capacity once per request
        if cache.len_bound + num_new <= cap:
            return
        if not cache.len_exact and cache.sync_len_bound() + num_new <= cap:
            return
        raise ValueError(
            f"{arg}: context of {cache.len_bound + num_new} tokens exceeds the cache capacity "
            f"S_max={cap} ({cache.len_bound} committed + {num_new} new)"
        )

    def _check_shape_device(self, t: Tensor, name: str, shape: tuple[int, ...]) -> None:
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
        if t.device != self.device:
            raise ValueError(f"{name} is on {t.device} but the model is on {self.device}")

    def _check_int(self, t: Tensor, name: str, shape: tuple[int, ...]) -> None:
        self._check_shape_device(t, name, shape)
        if t.dtype not in _INT_DTYPES:
            raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")

    def _check_ids(self, ids: Tensor, name: str) -> Tensor:
        if not isinstance(ids, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
        num_b = self.batch_size
        if ids.dim() != 2 or ids.shape[0] != num_b or ids.shape[1] < 1:
            raise ValueError(
                f"{name} must have shape [B={num_b}, T>=1] (batch size fixed at construction), "
                f"got {list(ids.shape)}"
            )
        self._check_int(ids, name, tuple(ids.shape))
        if self.validate:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(
                    f"{name}: token ids must be in [0, V={self.vocab_size}), got [{lo}, {hi}]"
                )
        return ids.to(torch.long)

    def _check_path_values(self, path: Tensor, accepted: Tensor, num_n: int) -> None:
        path_len = path.shape[1]
        acc = accepted.to(torch.long)
        a_lo, a_hi = int(acc.min()), int(acc.max())
        if a_lo < 0 or a_hi > path_len - 1:
            raise ValueError(f"accepted must be in [0, L={path_len - 1}], got [{a_lo}, {a_hi}]")
        p = path.to(torch.long)
        valid = torch.arange(path_len, device=p.device)[None, :] <= acc[:, None]
        if bool((p[:, 0] != 0).any()):
            raise ValueError("path[:, 0] must be 0 (the root)")
        if bool(((p < 0) | (p >= num_n))[valid].any()):
            raise ValueError(f"path: accepted entries must be node ids in [0, N={num_n})")
        if path_len > 1:
            step_ok = (p[:, 1:] > p[:, :-1]) | ~valid[:, 1:]
            if not bool(step_ok.all()):
                raise ValueError(
                    "path must be strictly increasing up to `accepted` (parent < child)"
                )
