"""Training checkpoints (safetensors + JSON): resuming the drafter and the LM trainers is
bit-identical to an uninterrupted run (parameters, optimizer, scheduler, every RNG), writes are
atomic, and the file holds no pickle."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_drafter_train import _cfg, _stream, _target
from transformers import Qwen3Config, Qwen3ForCausalLM

from difftree_rt.train.checkpoint import (
    capture_rng,
    load_checkpoint,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
)
from difftree_rt.train.corpus import TokenStream
from difftree_rt.train.drafter import train_drafter
from difftree_rt.train.lm import LMTrainConfig, train_lm


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal nested structures: same types, bit-equal tensors (dtype included)."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b or (a != a and b != b), (where, a, b)


def test_drafter_resume_is_bit_identical(tmp_path: Path) -> None:
    target = _target()
    cfg = _cfg(steps=4, ckpt_every=100)
    straight_ckpt = tmp_path / "straight.ckpt"
    straight = train_drafter(target, _stream(), cfg, straight_ckpt, progress=False)
    ckpt = tmp_path / "d.ckpt"
    first = train_drafter(target, _stream(), cfg, ckpt, max_seconds=0.0, progress=False)
    assert first.step == 1 and not first.finished
    assert ckpt.read_bytes()[8:9] == b"{" and not list(tmp_path.glob("*.tmp"))  # safetensors
    resumed = train_drafter(target, _stream(), cfg, ckpt, progress=False)
    assert resumed.step == 4 and resumed.finished
    _assert_same(straight.drafter.state_dict(), resumed.drafter.state_dict())
    # The final checkpoints agree too: optimizer moments, scheduler, generator state.
    a, b = read_checkpoint(straight_ckpt), read_checkpoint(ckpt)
    for key in ("model", "optimizer", "scheduler", "step"):
        _assert_same(a[key], b[key], key)
    _assert_same(a["rng"]["generator"], b["rng"]["generator"], "generator")
    assert a["extra"]["config"] == b["extra"]["config"]


def test_lm_resume_is_bit_identical(tmp_path: Path) -> None:
    def model() -> Qwen3ForCausalLM:
        torch.manual_seed(0)
        cfg = Qwen3Config(vocab_size=16, hidden_size=16, intermediate_size=32,
                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          head_dim=8, tie_word_embeddings=True)  # fmt: skip
        return Qwen3ForCausalLM(cfg)

    stream = TokenStream(torch.arange(600) % 13)
    cfg = LMTrainConfig(steps=3, batch_size=2, context=8, warmup=1, autocast=False)
    straight = model()
    train_lm(straight, stream, cfg, tmp_path / "a.ckpt", progress=False)
    resumed = model()
    step, done = train_lm(resumed, stream, cfg, tmp_path / "b.ckpt", max_seconds=0.0,
                          progress=False)  # fmt: skip
    assert (step, done) == (1, False)
    assert train_lm(resumed, stream, cfg, tmp_path / "b.ckpt", progress=False) == (3, True)
    _assert_same(straight.state_dict(), resumed.state_dict())
    a, b = read_checkpoint(tmp_path / "a.ckpt"), read_checkpoint(tmp_path / "b.ckpt")
    _assert_same(a["optimizer"], b["optimizer"])
    _assert_same(a["scheduler"], b["scheduler"])


def test_rng_states_round_trip(tmp_path: Path) -> None:
    """Every RNG continues exactly where it was saved (python, numpy incl. a cached gaussian,
    torch, the training generator)."""
    random.seed(3)
    np.random.seed(4)
    np.random.standard_normal()  # leaves a cached gaussian (has_gauss = 1)
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(6)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    path = tmp_path / "r.ckpt"
    save_checkpoint(path, model=model, optimizer=opt, step=7, generator=gen,
                    extra={"log": [{"loss": 0.5}], "config": {"betas": (0.9, 0.95)}})  # fmt: skip

    def draws(g: torch.Generator) -> tuple[Any, ...]:
        return (
            random.random(),
            np.random.standard_normal(),
            torch.rand(3),
            torch.rand(2, generator=g),
        )

    expected = draws(gen)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    gen2 = torch.Generator().manual_seed(0)
    step, extra = load_checkpoint(path, model=model, optimizer=opt, generator=gen2)
    assert step == 7 and extra == {"log": [{"loss": 0.5}], "config": {"betas": (0.9, 0.95)}}
    got = draws(gen2)
    assert got[:2] == expected[:2]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])
    state = capture_rng(gen2)
    restore_rng(state, gen2)
    assert torch.equal(state["torch"], torch.get_rng_state())


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model=model, optimizer=opt, step=1)
    before = path.read_bytes()
    with pytest.raises(TypeError, match="extra"):
        save_checkpoint(path, model=model, optimizer=opt, step=2, extra={"bad": object()})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert read_checkpoint(path)["step"] == 1


def test_crash_mid_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, model=model, optimizer=opt, step=1)
    before = path.read_bytes()

    def torn_write(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"\0" * 5)
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", torn_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, optimizer=opt, step=2)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
