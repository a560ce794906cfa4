"""Every bad ``generate`` argument and every mismatched (target, drafter) pair is a ValueError
naming the argument, raised before any work is done (never silent garbage, never a torch or
allocator error from deep inside a round)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from engine_helpers import greedy_reference, make_drafter, make_target, random_pair

from difftree_rt import SpeculativeDecoder

V = 128  # random_pair's vocabulary
IDS = torch.tensor([[1, 2, 3]])
PROMPTS = [torch.tensor([1, 2, 3]), torch.tensor([4])]


def _decoder(policy: str = "ddtree") -> SpeculativeDecoder:
    target, drafter = random_pair("qwen3")
    return SpeculativeDecoder(target, drafter if policy != "ar" else None, policy, budget=8)


@pytest.mark.parametrize(
    "stop",
    [
        torch.tensor([16.9]),  # was truncated to 16 and silently stopped there
        torch.tensor([16.0]),
        torch.tensor([True]),
        torch.tensor([16 + 0j]),
        torch.tensor([V]),
        16.0,
        [3, 4.5],
        [True],
    ],
    ids=["float16.9", "float16.0", "bool_tensor", "complex", "oov_tensor", "float", "list_float",
         "list_bool"],
)  # fmt: skip
def test_stop_token_ids_must_be_integer_token_ids(stop: Any) -> None:
    with pytest.raises(ValueError, match="stop_token_ids"):
        _decoder().generate(IDS, 16, stop_token_ids=stop)


def test_integer_stop_tensors_of_any_int_dtype_still_work() -> None:
    dec = _decoder()
    ref = dec.generate(IDS, 12)
    stop = int(ref.sequences[0, 3 + 4])  # the 5th new token
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        out = dec.generate(IDS, 12, stop_token_ids=torch.tensor([stop], dtype=dtype))
        assert out.stats.stopped
        assert torch.equal(out.sequences, ref.sequences[:, : 3 + 5])


@pytest.mark.parametrize(
    "dtype", [torch.complex128, torch.complex64, torch.float64, torch.float16, torch.bool]
)
@pytest.mark.parametrize("form", ["tensor", "list"])
def test_input_ids_must_be_integers(dtype: torch.dtype, form: str) -> None:
    ids: Any = IDS.to(dtype) if form == "tensor" else [p.to(dtype) for p in PROMPTS]
    with pytest.raises(ValueError, match="input_ids"):
        _decoder().generate(ids, 4)


def test_unsigned_input_ids_are_token_ids() -> None:
    dec = _decoder()
    ref = dec.generate(IDS, 6)
    assert torch.equal(dec.generate(IDS.to(torch.uint8), 6).sequences, ref.sequences)


@pytest.mark.parametrize("pad", [-7, V, 10**6, True, 2.0])
@pytest.mark.parametrize("batch", [False, True])
def test_pad_token_id_must_be_a_token_id(pad: Any, batch: bool) -> None:
    ids: Any = PROMPTS if batch else IDS
    with pytest.raises(ValueError, match="pad_token_id"):
        _decoder().generate(ids, 4, pad_token_id=pad)


def test_out_of_vocabulary_config_pad_is_not_written() -> None:
    """A model whose config.pad_token_id is outside the vocabulary falls back (first stop
    token, else 0) instead of writing a non-token into ``sequences``."""
    target, drafter = random_pair("qwen3")
    dec = SpeculativeDecoder(target, drafter, "ddtree", budget=8)
    saved = target.config.pad_token_id
    target.config.pad_token_id = V + 5
    try:
        out = dec.generate(PROMPTS, 4)
    finally:
        target.config.pad_token_id = saved
    assert int(out.sequences.min()) >= 0 and int(out.sequences.max()) < V


@pytest.mark.parametrize("policy", ["ar", "ddtree"])
@pytest.mark.parametrize("caps", [10**12, 2**40, [4, 10**12]])
def test_huge_max_new_tokens_names_the_argument(policy: str, caps: Any) -> None:
    ids: Any = PROMPTS if isinstance(caps, list) else IDS
    with pytest.raises(ValueError, match=r"max_new_tokens.*(memory|at most)"):
        _decoder(policy).generate(ids, caps)


def test_max_new_tokens_past_int32_positions_names_the_argument(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import difftree_rt.engine.decoder as decoder_module

    monkeypatch.setattr(decoder_module, "device_memory_bytes", lambda device: None)  # unknown
    with pytest.raises(ValueError, match=r"max_new_tokens=2199023255552 .*int32"):
        _decoder().generate(IDS, 2**41)


@pytest.mark.parametrize("caps", [True, 0, -3, 2.0, "8", None, [4, True]])
def test_max_new_tokens_must_be_positive_ints(caps: Any) -> None:
    ids: Any = PROMPTS if isinstance(caps, list) else IDS
    with pytest.raises(ValueError, match="max_new_tokens"):
        _decoder().generate(ids, caps)


@pytest.mark.parametrize(
    "streamer,batch",
    [
        (5, False),
        ("print", True),
        (lambda b, tokens: None, False),  # a batch streamer on a solo call
        (lambda tokens: None, True),  # a solo streamer on a batch
    ],
    ids=["int", "str", "two_args_solo", "one_arg_batch"],
)
def test_streamer_is_checked_before_generation(streamer: Any, batch: bool) -> None:
    dec = _decoder()
    ids: Any = PROMPTS if batch else IDS
    with pytest.raises(ValueError, match="streamer"):
        dec.generate(ids, 4, streamer=streamer)


def test_streamers_of_the_right_shape_are_accepted() -> None:
    dec = _decoder()
    got: list[Any] = []
    dec.generate(IDS, 4, streamer=got.extend)  # a builtin bound method
    dec.generate(IDS, 4, streamer=lambda *a: got.append(a))
    dec.generate(PROMPTS, 4, streamer=lambda b, t, *rest: got.append((b, t)))
    assert len(got) >= 4 + 2


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(temperature="hot"), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=torch.tensor(1.0)), "temperature"),
        (dict(temperature=[0.5, 0.5]), "temperature"),  # B = 1
        (dict(temperature=1.0, top_k=2.0), "top_k"),
        (dict(temperature=1.0, top_k=True), "top_k"),
        (dict(temperature=1.0, top_p=1.5), "top_p"),
        (dict(temperature=1.0, top_p=float("nan")), "top_p"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**63), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(seed=[1, 2]), "seed"),  # B = 1
        (dict(attention_mask=torch.ones(1, 3)), "attention_mask"),
        (dict(attention_mask=torch.ones(1, 4, dtype=torch.long)), "attention_mask"),
    ],
)
def test_sampling_and_mask_arguments(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        _decoder().generate(IDS, 4, **kwargs)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(max_new_tokens=[4, 4, 4]), "max_new_tokens"),
        (dict(temperature=[0.0]), "temperature"),
        (dict(top_p=[0.5, 0.5, 0.5], temperature=1.0), "top_p"),
        (dict(seed=[1]), "seed"),
        (dict(seed=[1, "x"]), "seed"),
    ],
)
def test_per_request_lists_must_have_one_value_per_request(
    kwargs: dict[str, Any], name: str
) -> None:
    kwargs.setdefault("max_new_tokens", 4)
    with pytest.raises(ValueError, match=name):
        _decoder().generate(PROMPTS, **kwargs)


@pytest.mark.parametrize("target_dtype,drafter_dtype", [
    (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)
])  # fmt: skip
def test_drafter_dtype_must_match_the_target(
    target_dtype: torch.dtype, drafter_dtype: torch.dtype
) -> None:
    target = make_target("qwen3").to(target_dtype)
    drafter = make_drafter(make_target("qwen3")).to(drafter_dtype)
    with pytest.raises(ValueError, match="dtype") as err:
        SpeculativeDecoder(target, drafter, "ddtree", budget=8)
    message = str(err.value)
    assert str(target_dtype) in message and str(drafter_dtype) in message
    assert "drafter.to(" in message


def test_from_pretrained_aligns_a_loaded_drafter_to_the_target() -> None:
    target = make_target("qwen3")
    drafter = make_drafter(target).to(torch.bfloat16)
    dec = SpeculativeDecoder.from_pretrained(target, drafter, "ddtree", budget=8)
    assert dec.drafter is not None and dec.drafter.dtype == torch.float32
    out = dec.generate(IDS, 12)
    assert torch.equal(out.sequences, greedy_reference(target, IDS, 12))
