"""The public decoder: construct (checks), ``from_pretrained``, ``generate``.

Vocabulary: B batch, T prompt length, S drafter block size, L = S - 1 draft depth, N tree
capacity (budget + 1, root included), P = path columns (<= L + 1), V vocabulary.

The decoding round exists once (``engine/round.py``: ``[B, ...]`` device state and one step,
DESIGN.md §3); two launchers drive it (``engine/runner.py``: eager, and graph mode with CUDA
graphs); a call's arguments become a validated request (``engine/request.py``) that lives for
that call. The decoder holds only what outlives a call: the models, the policy, the target
adapters (one solo, one per batch size in use) and the rounds' buffers.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..models.compiled import CompileState
from ..models.dflash import DFlashDrafter
from ..models.pairing import check_drafter, check_vp_drafter
from ..models.target import TargetAdapter
from ..models.target_support import check_target_model
from ..policies import MAX_BUDGET, DraftPolicy, make_policy
from ..policies.auto import AutoPolicy
from .auto_runner import AutoGraphRunner, AutoRunner
from .output import CACHE_ROUND, GenerationOutput, is_int
from .request import GenerateRequest, build_request, device_memory_bytes
from .round import RoundConfig, TargetStep
from .runner import EagerRunner, GraphRunner, RoundPool
from .stats import GenerationStats

__all__ = ["GenerationOutput", "SpeculativeDecoder"]

# Target positions are int32 on the device (cache lengths, tree positions).
_MAX_POSITIONS = 2**31 - 1


class SpeculativeDecoder:
    """Lossless speculative decoding of an HF causal LM with a DFlash drafter.

    Args:
        target: an HF causal LM (``AutoModelForCausalLM``-style, e.g. Qwen3/Llama/Qwen2/Mistral)
            or a :class:`TargetAdapter` around one (its ``feature_layers`` must be the
            drafter's ``target_layer_ids``).
        drafter: a :class:`DFlashDrafter` fitting the target (bound to it here); may be None
            only for ``policy="ar"``. It must have the target's dtype and device (it runs the
            target's embedding and LM head): a mismatch is a ``ValueError`` naming both, fixed
            by ``drafter.to(device=..., dtype=...)``; :meth:`from_pretrained` aligns it for you.
        policy: ``"ar"`` (the target alone on the same static cache: the baseline), ``"chain"``
            (DFlash: argmax per depth), ``"ddtree"``, another registered name, or a
            :class:`DraftPolicy` instance.
        budget: draft nodes per round, 1..4096 (root excluded; "chain" uses ``min(budget, L)``).
        max_length: target cache rows per request (prompt + new tokens + one tree). None sizes
            (and grows) the cache per ``generate`` call.
        validate: let the target adapter re-check verify/commit arguments (device syncs;
            for debugging: the decoder's own tensors are well-formed by construction).
        profile: on CUDA, synchronise at phase boundaries so per-phase times are exact
            (eager path only: graph mode never synchronises inside its loop).
        cuda_graphs: graph mode (``engine/runner.py``): rounds on static buffers with no host
            sync, captured in CUDA graphs. None: on for a CUDA target with a graph-safe
            policy (chain, ddtree, caddtree, taps with a built-in scorer, d2sd; and "ar", one
            target step per captured round: the fair baseline) and ``validate=False``, off
            otherwise. True on a
            CPU target runs the same static-buffer rounds eagerly (for tests). Batches run in
            graph mode too (one set of buffers and graphs per batch size). Requests outside
            its buckets (more than 16 stop tokens) run on the eager path.
        graph_capture: with graph mode on a CUDA target, capture and replay CUDA graphs; False
            runs the static-buffer rounds eagerly (debugging).
        compile: compiled model forwards (``torch.compile``, inductor; ``models/compiled.py``):
            graph mode's target verify / step and drafter forwards, compiled once per static
            shape (B, tree-size bucket, key span) on first use, then captured in the round's
            CUDA graphs as before. Needs graph mode: True turns it on where ``cuda_graphs`` is
            None (on a CPU target: the static-buffer rounds, uncaptured). None: off (the
            default until measured to win; see docs/NOTES.md "Compiled forwards"). A failed
            compile falls back to uncompiled forwards with one ``RuntimeWarning``. Compile
            seconds are reported in ``stats.compile_time``.
        compile_mode: inductor mode, ``"default"`` or ``"max-autotune-no-cudagraphs"`` (the
            runner captures CUDA graphs itself).
    """

    def __init__(
        self,
        target: nn.Module | TargetAdapter,
        drafter: DFlashDrafter | None = None,
        policy: str | DraftPolicy = "ddtree",
        budget: int = 64,
        max_length: int | None = None,
        *,
        validate: bool = False,
        profile: bool = True,
        cuda_graphs: bool | None = None,
        graph_capture: bool = True,
        compile: bool | None = None,
        compile_mode: str = "default",
    ) -> None:
        if not is_int(budget) or not 1 <= budget <= MAX_BUDGET:
            raise ValueError(f"budget must be an int in [1, {MAX_BUDGET}], got {budget!r}")
        if isinstance(policy, DraftPolicy):
            self.policy: DraftPolicy | None = policy
            self.policy_name = policy.name or type(policy).__name__
        elif isinstance(policy, str):
            self.policy = None if policy == "ar" else make_policy(policy, budget)
            self.policy_name = policy
        else:
            raise ValueError(f"policy must be a str or a DraftPolicy, got {type(policy).__name__}")

        adapter = target if isinstance(target, TargetAdapter) else None
        model = adapter.model if adapter is not None else target
        if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
            raise ValueError(
                "target must be an HF causal LM (nn.Module with a config) or a TargetAdapter, "
                f"got {type(target).__name__}"
            )
        self._geometry = check_target_model(model)
        self.model = model
        self._target_dtype = next(model.parameters()).dtype

        if self.policy is not None and drafter is None:
            raise ValueError(
                f"drafter is required for policy {self.policy_name!r} (only 'ar' runs without one)"
            )
        if drafter is not None:
            check_drafter("drafter", drafter, model)
        self.drafter = drafter
        vp = self.policy.vp_drafter if self.policy is not None else None
        self.vp_drafter = None if vp is None else check_vp_drafter(vp, drafter, model)
        # Feature layers only matter when drafting; the "ar" baseline captures nothing.
        self.feature_layers: list[int] = (
            list(drafter.config.target_layer_ids)
            if drafter is not None and self.policy is not None
            else []
        )
        self.max_depth = drafter.block_size - 1 if drafter is not None else 0
        if self.policy is not None and self.policy.needs.redraft:
            second = self.vp_drafter if self.vp_drafter is not None else drafter
            assert second is not None
            self.max_depth = max(self.max_depth, second.block_size - 1)
        self.capacity = self.policy.capacity(self.max_depth) if self.policy is not None else 1
        # P: columns of a walk path (root + at most L accepted nodes, at most N - 1 of them).
        self.path_cols = min(self.max_depth, self.capacity - 1) + 1
        self.budget = self.policy.budget if self.policy is not None else 0
        self.validate = validate
        self.profile = profile

        if max_length is not None:
            if not is_int(max_length) or max_length < self.capacity + 2:
                raise ValueError(
                    f"max_length must be None or an int >= {self.capacity + 2} (a prompt token, "
                    f"a new token and one tree of N={self.capacity} rows), got {max_length!r}"
                )
        if adapter is not None:
            if list(adapter.feature_layers) != self.feature_layers and self.policy is not None:
                raise ValueError(
                    f"target: the TargetAdapter captures feature_layers={adapter.feature_layers} "
                    f"but the drafter needs target_layer_ids={self.feature_layers}"
                )
            if max_length is not None and max_length > adapter.max_length:
                raise ValueError(
                    f"max_length={max_length} exceeds the TargetAdapter's capacity "
                    f"{adapter.max_length}"
                )
        self.max_length = max_length
        self._fixed_adapter = adapter is not None
        self.adapter: TargetAdapter | None = adapter
        if adapter is None and max_length is not None:
            self.adapter = self._make_adapter(max_length)
        self.vocab_size = int(model.config.vocab_size)
        self.device = next(model.parameters()).device
        # Batched generation (B > 1): its own target adapter, kept for the next call of that B.
        self._batch_adapter: TargetAdapter | None = None
        self.cuda_graphs = self._resolve_cuda_graphs(cuda_graphs)
        self.compile = self._resolve_compile(compile, cuda_graphs)
        self.cuda_graphs = self.cuda_graphs or self.compile
        self._compile_state = CompileState(compile_mode) if self.compile else None
        self.graph_capture = bool(graph_capture)
        self._pool = RoundPool(self._round_config(), lambda: (self.adapter, self._batch_adapter))
        self._eager = (
            AutoRunner(self._pool, profile=profile)
            if isinstance(self.policy, AutoPolicy)
            else EagerRunner(self._pool, profile=profile)
        )
        self._graph_runner: GraphRunner | None = None
        self.tokenizer: Any = None  # set by from_pretrained when the target directory has one
        # generate runs one call at a time (see _serialised).
        self._lock = threading.Lock()
        self._lock_owner: int | None = None

    @classmethod
    def from_pretrained(
        cls,
        target: str | os.PathLike[str] | nn.Module,
        drafter: str | os.PathLike[str] | DFlashDrafter | None = None,
        policy: str | DraftPolicy = "ddtree",
        budget: int = 64,
        *,
        vp_drafter: str | os.PathLike[str] | DFlashDrafter | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> SpeculativeDecoder:
        """A decoder from local directories written by ``save_pretrained`` (or loaded models).

        Args:
            target: an HF causal-LM directory (``AutoModelForCausalLM``) or a loaded model.
            drafter: a DFlash drafter directory (the published layout) or a
                :class:`DFlashDrafter`; None for ``policy="ar"``.
            policy, budget: as in the constructor.
            vp_drafter: D²SD's second drafter (directory or drafter); needs ``policy="d2sd"``.
            dtype: weights' dtype for what is loaded from disk (default bfloat16 on CUDA,
                float32 on the CPU); a loaded target keeps its own device and dtype. The
                drafters, loaded or given, are moved to the target's dtype and device (a given
                :class:`DFlashDrafter` in place, as ``nn.Module.to`` does).
            device: "auto" / None (CUDA when available), "cpu", "cuda", ...
            **kwargs: the constructor's keyword arguments (``max_length``, ``cuda_graphs``, ...).

        Returns:
            The decoder; ``.tokenizer`` holds the target directory's tokenizer when it has one
            (else None).
        """
        from .pretrained import from_pretrained

        return from_pretrained(
            cls, target, drafter, policy, budget, vp_drafter=vp_drafter, dtype=dtype,
            device=device, **kwargs,
        )  # fmt: skip

    def _resolve_cuda_graphs(self, cuda_graphs: bool | None) -> bool:
        """Graph mode on or off (see ``cuda_graphs`` in the class docstring)."""
        if cuda_graphs is not None and not isinstance(cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be None, True or False, got {cuda_graphs!r}")
        safe = self.policy is None or self.policy.needs.graph_safe  # "ar" (None): one target step
        if cuda_graphs is None:
            return safe and self.device.type == "cuda" and not self.validate
        if cuda_graphs and not safe:
            raise ValueError(
                "cuda_graphs=True needs a graph-safe policy (ar, chain, ddtree, caddtree, d2sd, "
                f"taps with a built-in scorer); policy {self.policy_name!r} runs on the eager path "
                "(cuda_graphs=False or None)"
            )
        if cuda_graphs and self.validate:
            raise ValueError("cuda_graphs=True cannot be combined with validate=True (host syncs)")
        return cuda_graphs

    def _resolve_compile(self, compile: bool | None, cuda_graphs: bool | None) -> bool:
        """Compiled forwards on or off (see ``compile`` in the class docstring)."""
        if compile is not None and not isinstance(compile, bool):
            raise ValueError(f"compile must be None, True or False, got {compile!r}")
        if not compile:
            return False
        safe = self.policy is None or self.policy.needs.graph_safe
        if not self.cuda_graphs and not (cuda_graphs is None and safe and not self.validate):
            why = (
                "cuda_graphs=False" if cuda_graphs is False
                else "validate=True" if self.validate
                else f"policy {self.policy_name!r} is not graph-safe"
            )  # fmt: skip
            raise ValueError(
                f"compile=True needs graph mode's static shapes, but {why}; use compile=False "
                "(or a graph-safe policy with cuda_graphs None/True and validate=False)"
            )
        return True

    # ------------------------------------------------------------------------------------------
    # Construction helpers
    # ------------------------------------------------------------------------------------------
    def _make_adapter(self, max_length: int, batch_size: int = 1) -> TargetAdapter:
        return TargetAdapter(
            self.model,
            max_length=max_length,
            batch_size=batch_size,
            feature_layers=self.feature_layers or None,
            validate=self.validate,
            max_forward_rows=self.capacity,
        )

    def _adapter_for(self, needed: int, batch_size: int = 1) -> TargetAdapter:
        """The target adapter, (re)allocated when the decoder sizes the cache itself."""
        if self._fixed_adapter:
            assert self.adapter is not None
            if self.adapter.batch_size != batch_size:
                raise ValueError(
                    f"input_ids: {batch_size} request(s) but the TargetAdapter holds "
                    f"batch_size={self.adapter.batch_size} (they must match)"
                )
        elif batch_size != 1:
            return self._batch_adapter_for(needed, batch_size)
        if self.adapter is not None and (self._fixed_adapter or self.max_length is not None):
            if needed > self.adapter.max_length:
                raise ValueError(
                    f"max_length={self.adapter.max_length} is too small for this request: "
                    f"prompt + max_new_tokens + one tree of N={self.capacity} rows needs {needed}"
                )
            return self.adapter
        if self.adapter is None or self.adapter.max_length < needed:
            rows = -(-needed // CACHE_ROUND) * CACHE_ROUND
            self.adapter = self._make_adapter(rows)
        return self.adapter

    def _batch_adapter_for(self, needed: int, batch_size: int) -> TargetAdapter:
        """The decoder-owned adapter of a batch (B > 1), kept for the next call of that B."""
        ad = self._batch_adapter
        if self.max_length is not None:
            if needed > self.max_length:
                raise ValueError(
                    f"max_length={self.max_length} is too small for this request: "
                    f"prompt + max_new_tokens + one tree of N={self.capacity} rows needs {needed}"
                )
            if ad is None or ad.batch_size != batch_size:
                ad = self._make_adapter(self.max_length, batch_size)
        elif ad is None or ad.batch_size != batch_size or ad.max_length < needed:
            ad = self._make_adapter(-(-needed // CACHE_ROUND) * CACHE_ROUND, batch_size)
        self._batch_adapter = ad
        return ad

    def _round_config(self) -> RoundConfig:
        """The host constants every round of this decoder shares."""
        policy = self.policy if self.policy is not None else TargetStep()
        drafter = self.drafter if self.policy is not None else None
        second, redraft_rows = drafter, 0
        if policy.needs.redraft:
            assert drafter is not None
            second = self.vp_drafter if self.vp_drafter is not None else drafter
            redraft_rows = policy.redraft_rows() * second.block_size
        buckets = sorted(set(policy.size_buckets(self.max_depth)) | {self.capacity})
        if buckets[-1] != self.capacity:
            raise ValueError(
                f"policy {self.policy_name!r}: size_buckets {buckets} exceed its capacity "
                f"{self.capacity}"
            )
        return RoundConfig(
            policy, drafter, second, self.capacity, tuple(buckets), self.path_cols,
            redraft_rows, self.device, self._compile_state,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------
    # Generate
    # ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        input_ids: Tensor | Sequence[Tensor],
        max_new_tokens: int | Sequence[int],
        temperature: float | Sequence[float] = 0.0,
        top_k: int | Sequence[int | None] | None = None,
        top_p: float | Sequence[float | None] | None = None,
        seed: int | Sequence[int] | None = None,
        stop_token_ids: int | Sequence[int] | Tensor | None = None,
        streamer: Callable[..., None] | None = None,
        *,
        attention_mask: Tensor | None = None,
        pad_token_id: int | None = None,
    ) -> GenerationOutput:
        """Generate up to ``max_new_tokens`` tokens after each prompt of ``input_ids``.

        Greedy (``temperature=0``) output equals ``target.generate(do_sample=False)``; sampled
        output is distributed exactly as sampling the processed target distribution
        (temperature, top-k, top-p) token by token. ``seed`` keys every draw by
        (seed, round, node); None draws a seed from torch's global generator. Generation ends
        after a token of ``stop_token_ids`` (kept in the output) or ``max_new_tokens``
        tokens, never more. ``streamer``, when given, is called with the new token ids after
        the first token and after every round (one extra host read per call; None: no cost);
        on a batch (B > 1) as ``streamer(b, token_ids)`` for request b, in order per request
        (graph mode streams from the status it reads anyway).

        Batches (B > 1; graph mode included): ``input_ids [B, T]`` **left-padded** with
        ``attention_mask [B, T]`` (1 = token, each row ``0..0 1..1``; None = no padding), or a
        list of 1-D prompts of any lengths (padded here). Every request runs exactly as it
        would alone (its own positions from 0, its own rounds; finished requests stop
        changing): greedy tokens are the solo run's. Sampling: request b draws as a solo run
        with seed ``request_seeds(seed, B)[b]`` (request 0 keeps ``seed``), or ``seed[b]`` when
        ``seed`` is a sequence of B ints. ``max_new_tokens``, ``temperature``, ``top_k`` and
        ``top_p`` may be sequences of B values (per request; temperature 0 = greedy, top-k /
        top-p ``None`` = off). Each request still equals its solo run with its own values.
        ``pad_token_id`` fills rows after their last token (and the list form's left
        padding); None: the model's ``config.pad_token_id`` (when it is a token id), else the
        first stop token, else 0.

        Every argument is checked before any work (``ValueError`` naming it): token ids
        (prompts, stop and pad tokens) are integers in ``[0, V)``, ``max_new_tokens`` must fit
        the cache (``max_length``, or the device's memory when the decoder sizes the cache),
        and ``streamer`` must be callable in the form above. Thread safety: concurrent calls
        on one decoder run one at a time (a lock; its caches and graph buffers are shared),
        each with its own arguments and streamer; a streamer calling ``generate`` on its own
        decoder is a ``RuntimeError``. Use one decoder per thread to run calls in parallel.

        Returns:
            :class:`GenerationOutput` with ``sequences`` ``[B, T + new]``, ``stats`` (aggregate)
            and per-request ``prompt_lengths``, ``new_lengths`` and ``request_stats``.
        """
        req = build_request(
            input_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_token_ids,
            streamer, attention_mask, pad_token_id, vocab_size=self.vocab_size,
            device=self.device, config_pad=getattr(self.model.config, "pad_token_id", None),
        )  # fmt: skip
        self._check_cache_size(req)
        with self._serialised():
            return self._run(req)

    @contextlib.contextmanager
    def _serialised(self) -> Iterator[None]:
        """One call at a time per decoder (the caches and graph buffers are shared); a call
        from inside a streamer of a running call on the same thread is an error, not a
        deadlock."""
        if self._lock_owner == threading.get_ident():
            raise RuntimeError(
                "generate was called on a decoder whose generate is already running on this "
                "thread (from inside its streamer?); a decoder runs one call at a time: use "
                "another decoder, or collect the tokens and call generate after it returns"
            )
        with self._lock:
            self._lock_owner = threading.get_ident()
            try:
                yield
            finally:
                self._lock_owner = None

    def _check_cache_size(self, req: GenerateRequest) -> None:
        """A request the decoder sizes the cache for (``max_length=None``) must fit the device
        memory and int32 positions: a clear error naming ``max_new_tokens`` instead of an
        allocator error."""
        if self._fixed_adapter or self.max_length is not None:
            return  # a fixed cache: _adapter_for names max_length and what the request needs
        num_t, num_b = req.ids.shape[1], req.num_b
        per_row = self._geometry.kv_bytes_per_row(num_b, self._target_dtype)
        memory = device_memory_bytes(self.device)
        by_memory = memory is not None and memory // per_row < _MAX_POSITIONS
        limit_rows = memory // per_row if memory is not None and by_memory else _MAX_POSITIONS
        # Rows are rounded up to CACHE_ROUND when allocated.
        most = limit_rows // CACHE_ROUND * CACHE_ROUND - num_t - self.capacity
        if req.max_new <= most:
            return
        rows = num_t + req.max_new + self.capacity
        gib = rows * per_row / 2**30
        need = f"{rows} cache rows x B={num_b} ({gib:.3g} GiB of target KV cache)"
        if by_memory:
            assert memory is not None
            limit = f"more than the {memory / 2**30:.1f} GiB of memory on {self.device}"
        else:
            limit = f"more than the {_MAX_POSITIONS} positions of the cache (int32)"
        raise ValueError(
            f"max_new_tokens={req.max_new} is too large: prompt ({num_t}) + max_new_tokens + one "
            f"tree (N={self.capacity}) needs {need}, {limit}; at most about "
            f"max_new_tokens={max(most, 0)} fits this prompt"
        )

    def _runner(self) -> GraphRunner:
        """The decoder's graph-mode launcher (built once, on first use)."""
        if self._graph_runner is None:
            self._graph_runner = (
                AutoGraphRunner(self._pool, capture=self.graph_capture)
                if isinstance(self.policy, AutoPolicy)
                else GraphRunner(self._pool, capture=self.graph_capture)
            )
        return self._graph_runner

    def _launcher(self, adapter: TargetAdapter, req: GenerateRequest) -> EagerRunner:
        """This call's launcher: graph mode when on and the request fits its buckets."""
        if self.cuda_graphs and self._runner().supports(adapter, req.stop, req.num_b):
            return self._runner()
        return self._eager

    def _run(self, req: GenerateRequest) -> GenerationOutput:
        """One validated call: B requests, left-padded ``req.ids [B, T]`` with real lengths
        ``req.lengths``, each run exactly as alone (its own positions from 0, its own rounds;
        a finished request's rounds are no-ops until the whole batch is done)."""
        ids, lengths, stop, num_b = req.ids, req.lengths, req.stop, req.num_b
        policy = self.policy
        if num_b > 1 and policy is not None and policy.needs.needs_context:
            if not policy.needs.batch_context:
                raise NotImplementedError(
                    f"policy {self.policy_name!r} reads each request's token stream "
                    "(needs_context) and runs one request at a time: batched generation (B > 1) "
                    "is not supported for it; call generate per request (input_ids [1, T])"
                )
        num_t = ids.shape[1]
        adapter = self._adapter_for(num_t + req.max_new + self.capacity, num_b)
        adapter.reset()
        stats = GenerationStats(
            policy=self.policy_name, budget=self.budget, prompt_len=sum(lengths), batch_size=num_b
        )
        per = [stats] if num_b == 1 else [
            GenerationStats(policy=self.policy_name, budget=self.budget, prompt_len=n)
            for n in lengths
        ]  # fmt: skip
        t_start = time.perf_counter()
        # Left -> right padding: request b's tokens at columns 0..T_b-1, so its positions start
        # at 0 exactly as alone (the padding columns are computed, never committed).
        dev = self.device
        lens_t = torch.tensor(lengths, dtype=torch.long, device=dev)
        right = ids
        if min(lengths) < num_t:
            cols = torch.arange(num_t, device=dev)[None, :]
            src = (cols + (num_t - lens_t)[:, None]).clamp(max=num_t - 1)
            right = torch.where(cols < lens_t[:, None], torch.gather(ids, 1, src), 0)
        compiled_before = self._compile_state.compile_seconds if self._compile_state else 0.0
        out, gen = self._launcher(adapter, req).generate(adapter, right, req, per, stats)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        stats.total_time = time.perf_counter() - t_start
        if self._compile_state is not None:
            stats.compile_time = self._compile_state.compile_seconds - compiled_before
        # Outputs: row b's generated tokens, then pad_token_id up to the longest request.
        new_len = max(gen)
        gen_t = torch.tensor(gen, dtype=torch.long, device=dev)
        new = out[:, :new_len]
        new = torch.where(torch.arange(new_len, device=dev)[None, :] < gen_t[:, None], new, req.pad)
        ended = (
            torch.isin(out[torch.arange(num_b, device=dev), gen_t - 1], stop).tolist()
            if (stop is not None)
            else [False] * num_b
        )
        for b, s in enumerate(per):
            s.new_tokens = gen[b]
            s.stopped = bool(ended[b])
            if s is not stats:
                s.phase_time = dict(stats.phase_time)
                s.total_time = stats.total_time
                stats.accepted_lengths += s.accepted_lengths
                stats.emitted_per_round += s.emitted_per_round
        stats.new_tokens = sum(gen)
        stats.stopped = all(s.stopped for s in per)
        if num_b > 1:
            stats.batch_rounds = max(s.rounds for s in per)
        return GenerationOutput(
            sequences=torch.cat([ids, new], dim=1),
            stats=stats,
            prompt_lengths=lens_t.cpu(),
            new_lengths=gen_t.cpu(),
            request_stats=per,
        )
