"""One ``SpeculativeDecoder.generate`` call, validated into a per-call request object.

Vocabulary: B batch, T longest prompt, V vocabulary.

Everything a call brings (prompts, per-request limits and sampling values, stop and pad tokens,
the streamer) is checked here before any work is done and handed to the runner in a
:class:`GenerateRequest` that lives for that one call; nothing of a call is kept on the decoder,
so each call's streamer sees only its own tokens.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .output import is_int, per_request
from .sampling import SamplingParams, SamplingSpec, request_seeds, sampling_spec

__all__ = ["CallStreamer", "GenerateRequest", "build_request", "device_memory_bytes"]


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` (physical RAM for the CPU), None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (AttributeError, OSError, ValueError):
            return None
    return None


class CallStreamer:
    """A call's streamer: ``fn(token_ids)`` on a solo call, ``fn(b, token_ids)`` on a batch;
    every method is a no-op without one (and then reads nothing from the device)."""

    def __init__(self, fn: Callable[..., None] | None = None, batch: bool = False) -> None:
        self.fn = fn
        self.batch = batch

    def request(self, b: int, tokens: list[int]) -> None:
        """Hand request b's new tokens to the streamer."""
        if self.fn is None or not tokens:
            return
        if self.batch:
            self.fn(b, tokens)
        else:
            self.fn(tokens)

    def rows(self, out_buf: Tensor, before: list[int], after: list[int]) -> None:
        """Stream request b's tokens ``out_buf[b, before[b]:after[b]]`` for every b (one host
        read of the columns they span)."""
        if self.fn is None:
            return
        lo, hi = min(before), max(after)
        if hi <= lo:
            return
        rows = out_buf[:, lo:hi].tolist()
        for b, (begin, end) in enumerate(zip(before, after, strict=True)):
            self.request(b, [int(t) for t in rows[b][begin - lo : end - lo]])

    def span(self, out_buf: Tensor, begin: int, end: int) -> None:
        """Tokens ``out_buf[0, begin:end]`` of a solo call."""
        self.rows(out_buf, [begin], [end])


@dataclass
class GenerateRequest:
    """A validated ``generate`` call.

    Attributes:
        ids: ``[B, T]`` int64 prompts on the decoder's device, left-padded with ``pad``.
        lengths: real prompt length per request.
        caps: ``max_new_tokens`` per request.
        caps_t: the same as an int64 ``[B]`` device tensor.
        sampling: each request's sampling parameters as ``[B]`` device tensors.
        stop: ``[S]`` int64 stop token ids on the device, or None.
        pad: the token id written after a request's last token.
        streamer: the call's :class:`CallStreamer`.
    """

    ids: Tensor
    lengths: list[int]
    caps: list[int]
    caps_t: Tensor
    sampling: SamplingSpec
    stop: Tensor | None
    pad: int
    streamer: CallStreamer

    @property
    def num_b(self) -> int:
        return int(self.ids.shape[0])

    @property
    def max_new(self) -> int:
        return max(self.caps)


def _is_int_dtype(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _stop_tokens(stop_token_ids: Any, vocab_size: int, device: torch.device) -> Tensor | None:
    if stop_token_ids is None:
        return None
    if isinstance(stop_token_ids, Tensor):
        if not _is_int_dtype(stop_token_ids.dtype):
            raise ValueError(
                f"stop_token_ids must hold integer token ids, got a {stop_token_ids.dtype} tensor "
                f"({stop_token_ids.reshape(-1)[:8].tolist()})"
            )
        stop_list = [int(s) for s in stop_token_ids.reshape(-1).tolist()]
    elif is_int(stop_token_ids):
        stop_list = [stop_token_ids]
    elif (
        isinstance(stop_token_ids, Sequence)
        and not isinstance(stop_token_ids, str)
        and all(is_int(s) for s in stop_token_ids)
    ):
        stop_list = list(stop_token_ids)
    else:
        raise ValueError(
            "stop_token_ids must be None, an int, a sequence of ints or an integer tensor, got "
            f"{stop_token_ids!r}"
        )
    bad = [s for s in stop_list if not 0 <= s < vocab_size]
    if bad:
        raise ValueError(f"stop_token_ids: {bad} are not token ids in [0, V={vocab_size})")
    if not stop_list:
        return None
    return torch.tensor(stop_list, dtype=torch.int64, device=device)


def _pad_token(pad_token_id: Any, config_pad: Any, stop: Tensor | None, vocab_size: int) -> int:
    if pad_token_id is None:
        if is_int(config_pad) and 0 <= config_pad < vocab_size:
            return int(config_pad)
        return int(stop[0]) if stop is not None else 0
    if not is_int(pad_token_id) or not 0 <= pad_token_id < vocab_size:
        raise ValueError(
            f"pad_token_id must be None or a token id in [0, V={vocab_size}) (it fills "
            f"sequences after a request's last token), got {pad_token_id!r}"
        )
    return int(pad_token_id)


def _check_ids_dtype(ids: Tensor, name: str) -> None:
    if not _is_int_dtype(ids.dtype):
        raise ValueError(f"{name} must hold integer token ids, got {ids.dtype}")


def _stack_prompts(
    prompts: list[Tensor], attention_mask: Any, pad: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """A list of 1-D prompts (or ``[1, T_b]``) -> left-padded ``(ids [B, T], mask [B, T])``."""
    if attention_mask is not None:
        raise ValueError(
            "attention_mask must be None when input_ids is a list of prompts (the list gives "
            "each request's length)"
        )
    if not prompts:
        raise ValueError("input_ids: the list of prompts is empty")
    rows = []
    for i, p in enumerate(prompts):
        if p.dim() == 2 and p.shape[0] == 1:
            p = p[0]
        if p.dim() != 1:
            raise ValueError(
                f"input_ids[{i}] must be a 1-D tensor of token ids, got {list(p.shape)}"
            )
        if p.numel() == 0:
            raise ValueError(f"input_ids[{i}] is empty (a prompt needs >= 1 token)")
        _check_ids_dtype(p, f"input_ids[{i}]")
        rows.append(p.to(device=device, dtype=torch.long))
    num_t = max(r.numel() for r in rows)
    ids = torch.full((len(rows), num_t), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), num_t), dtype=torch.long, device=device)
    for b, r in enumerate(rows):
        ids[b, num_t - r.numel() :] = r
        mask[b, num_t - r.numel() :] = 1
    return ids, mask


def _mask_lengths(attention_mask: Any, num_b: int, num_t: int, device: torch.device) -> Tensor:
    """A checked left-padding ``attention_mask`` as int64 ``[B, T]`` on ``device``."""
    if not isinstance(attention_mask, Tensor):
        raise ValueError(
            f"attention_mask must be None or a torch.Tensor, got {type(attention_mask).__name__}"
        )
    if tuple(attention_mask.shape) != (num_b, num_t):
        raise ValueError(
            f"attention_mask must have the shape of input_ids {[num_b, num_t]}, got "
            f"{list(attention_mask.shape)}"
        )
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        raise ValueError(f"attention_mask must hold 0/1 (int or bool), got {attention_mask.dtype}")
    m = attention_mask.to(device=device, dtype=torch.long)
    if bool(((m != 0) & (m != 1)).any()):
        raise ValueError("attention_mask must hold only 0 and 1")
    empty = [b for b, n in enumerate(m.sum(dim=1).tolist()) if n == 0]
    if empty:
        raise ValueError(f"attention_mask: request(s) {empty} have no prompt token (empty prompt)")
    if num_t > 1 and bool((m[:, 1:] < m[:, :-1]).any()):
        bad = sorted({int(b) for b in (m[:, 1:] < m[:, :-1]).nonzero()[:, 0].tolist()})
        raise ValueError(
            f"attention_mask: rows {bad} are not left-padded (right padding or holes); pad "
            "prompts on the left (tokenizer padding_side='left'), each row 0...0 1...1"
        )
    return m


def _prompts(
    input_ids: Any, attention_mask: Any, pad: int, vocab_size: int, device: torch.device
) -> tuple[Tensor, list[int]]:
    """``input_ids`` (+ ``attention_mask``) -> (left-padded ``[B, T]`` int64 on ``device``, real
    prompt length per request)."""
    if isinstance(input_ids, (list, tuple)) and all(isinstance(x, Tensor) for x in input_ids):
        input_ids, attention_mask = _stack_prompts(list(input_ids), attention_mask, pad, device)
    if not isinstance(input_ids, Tensor):
        raise ValueError(
            "input_ids must be a torch.Tensor [B, T] (or a list of 1-D tensors), "
            f"got {type(input_ids).__name__}"
        )
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be [B, T] with T >= 1, got {list(input_ids.shape)}")
    if input_ids.shape[0] < 1:
        raise ValueError("input_ids must hold at least one request (B >= 1), got B = 0")
    _check_ids_dtype(input_ids, "input_ids")
    num_b, num_t = input_ids.shape
    ids = input_ids.to(device=device, dtype=torch.long)
    if attention_mask is None:
        lengths, real = [num_t] * num_b, ids
    else:
        m = _mask_lengths(attention_mask, num_b, num_t, device)
        lengths = [int(n) for n in m.sum(dim=1).tolist()]
        real = ids[m.bool()]
    lo, hi = int(real.min()), int(real.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"input_ids: token ids must be in [0, V={vocab_size}), got [{lo}, {hi}]")
    return ids, lengths


def _seeds(seed: Any, num_b: int) -> list[int]:
    """Per-request seeds: ``seed`` an int -> :func:`request_seeds`; a sequence of B ints ->
    as given; None -> one seed from torch's global generator, then derived."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    if isinstance(seed, Sequence) and not isinstance(seed, str):
        seeds = per_request(seed, "seed", num_b)
    elif is_int(seed) and 0 <= seed < 2**63:
        seeds = request_seeds(seed, num_b)
    else:
        seeds = [seed]  # rejected by SamplingParams.validate, naming `seed`
    for s in seeds:
        SamplingParams(seed=s).validate()
    return seeds


def _caps(max_new_tokens: Any, num_b: int) -> list[int]:
    caps = per_request(max_new_tokens, "max_new_tokens", num_b)
    for cap in caps:
        if not is_int(cap) or cap < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {cap!r}")
    return caps


def check_streamer(streamer: Any, batch: bool) -> CallStreamer:
    """A call's streamer, checked to be callable as ``streamer(token_ids)`` (solo) or
    ``streamer(b, token_ids)`` (batch) before any token is generated."""
    if streamer is None:
        return CallStreamer(None, batch)
    form = "streamer(b, token_ids) on a batch (B > 1)" if batch else "streamer(token_ids)"
    if not callable(streamer):
        raise ValueError(
            f"streamer must be None or a callable, called as {form}; got "
            f"{type(streamer).__name__} {streamer!r}"
        )
    try:
        signature = inspect.signature(streamer)
    except (TypeError, ValueError):  # no introspectable signature (some builtins): trust it
        return CallStreamer(streamer, batch)
    try:
        signature.bind(*((0, [0]) if batch else ([0],)))
    except TypeError as err:
        raise ValueError(
            f"streamer {streamer!r} cannot be called as {form} (signature {signature}: {err})"
        ) from None
    return CallStreamer(streamer, batch)


def build_request(
    input_ids: Any,
    max_new_tokens: Any,
    temperature: Any,
    top_k: Any,
    top_p: Any,
    seed: Any,
    stop_token_ids: Any,
    streamer: Any,
    attention_mask: Any,
    pad_token_id: Any,
    *,
    vocab_size: int,
    device: torch.device,
    config_pad: Any = None,
) -> GenerateRequest:
    """Validate one ``generate`` call (``ValueError`` naming the argument) into a request.

    ``config_pad``: the model's ``config.pad_token_id`` (the default pad when it is a token id).
    """
    if not isinstance(max_new_tokens, Sequence) or isinstance(max_new_tokens, str):
        _caps(max_new_tokens, 1)  # a bad scalar is named before the prompts are read
    stop = _stop_tokens(stop_token_ids, vocab_size, device)
    pad = _pad_token(pad_token_id, config_pad, stop, vocab_size)
    ids, lengths = _prompts(input_ids, attention_mask, pad, vocab_size, device)
    num_b = ids.shape[0]
    caps = _caps(max_new_tokens, num_b)
    seeds = _seeds(seed, num_b)
    temps = per_request(temperature, "temperature", num_b)
    top_ks = per_request(top_k, "top_k", num_b)
    top_ps = per_request(top_p, "top_p", num_b)
    rows = [SamplingParams(*row) for row in zip(temps, top_ks, top_ps, seeds, strict=True)]
    sampling = sampling_spec(rows, device)
    caps_t = torch.tensor(caps, dtype=torch.int64, device=device)
    call_streamer = check_streamer(streamer, batch=num_b > 1)
    return GenerateRequest(ids, lengths, caps, caps_t, sampling, stop, pad, call_streamer)
