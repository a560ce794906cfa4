"""Concurrent ``generate`` calls on one decoder are serialised: each returns exactly its solo
output and each streamer receives only its own call's tokens. A streamer that calls
``generate`` on its own decoder gets a clear error instead of a deadlock or corrupt state."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from engine_helpers import random_pair

from difftree_rt import SpeculativeDecoder


def _prompts() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, 128, (1, 5 + 3 * i), generator=gen) for i in range(4)]


def _run_threads(calls: list[Any]) -> list[Any]:
    """Run every call in its own thread, all released at once; re-raise the first error."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = calls[i]()
        except BaseException as e:  # reported to the test thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a generate call hung"
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("policy", ["ar", "ddtree"])
def test_concurrent_calls_equal_solo_calls_with_their_own_streamers(policy: str) -> None:
    target, drafter = random_pair("qwen3")
    dec = SpeculativeDecoder(target, drafter if policy != "ar" else None, policy, budget=8)
    prompts = _prompts()
    batch = [p[0] for p in prompts[2:]]
    settings = [
        dict(max_new_tokens=40),
        dict(max_new_tokens=33, temperature=1.0, seed=5),
    ]
    solo = [dec.generate(prompts[i], **settings[i]).sequences for i in range(2)]
    solo_batch = dec.generate(batch, [30, 20]).sequences

    for _ in range(3):
        _check_round(dec, prompts, batch, settings, solo, solo_batch)


def _check_round(
    dec: SpeculativeDecoder,
    prompts: list[torch.Tensor],
    batch: list[torch.Tensor],
    settings: list[dict[str, Any]],
    solo: list[torch.Tensor],
    solo_batch: torch.Tensor,
) -> None:
    """Two solo calls and one batch call at once, each with its own streamer."""
    pieces: list[list[int]] = [[], []]
    batch_pieces: dict[int, list[int]] = {0: [], 1: []}

    def batch_streamer(b: int, tokens: list[int]) -> None:
        batch_pieces[b].extend(tokens)

    outs = _run_threads([
        lambda: dec.generate(prompts[0], streamer=pieces[0].extend, **settings[0]),
        lambda: dec.generate(prompts[1], streamer=pieces[1].extend, **settings[1]),
        lambda: dec.generate(batch, [30, 20], streamer=batch_streamer),
    ])  # fmt: skip
    for i in range(2):
        assert torch.equal(outs[i].sequences, solo[i])
        assert pieces[i] == solo[i][0, prompts[i].shape[1] :].tolist()
    assert torch.equal(outs[2].sequences, solo_batch)
    new = outs[2].new_lengths.tolist()
    start = solo_batch.shape[1] - max(new)  # the padded prompt width T
    for b in range(2):
        assert batch_pieces[b] == solo_batch[b, start : start + new[b]].tolist()


def test_generate_from_inside_a_streamer_is_a_clear_error() -> None:
    target, drafter = random_pair("qwen3")
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=8)
    prompt = _prompts()[0]
    ref = dec.generate(prompt, 20).sequences

    def nested(tokens: list[int]) -> None:
        dec.generate(prompt, 4)

    with pytest.raises(RuntimeError, match="streamer"):
        _run_threads([lambda: dec.generate(prompt, 20, streamer=nested)])
    # The decoder is still usable and exact afterwards.
    assert torch.equal(dec.generate(prompt, 20).sequences, ref)
