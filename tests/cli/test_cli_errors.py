"""Every user mistake on the command line is one line on stderr naming the argument, exit code
2, no traceback, reported before any model loads (for most, before torch is even imported)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_usage_error, run_cli

from difftree_rt.cli import build_parser
from difftree_rt.cli.args import DTYPES, POLICY_NAMES


def _model_dir(root: Path) -> Path:
    """A directory that looks like an HF model (config.json only: loading it would fail)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text("{}")
    return root


BAD_ARGS = [
    (["bench", "--budgets", "0"], "--budgets"),
    (["bench", "--budgets", "64", "-1"], "--budgets"),
    (["bench", "--num-prompts", "0"], "--num-prompts"),
    (["bench", "--policies", "ar", "bogus"], "--policies"),
    (["bench", "--prompts", "/nonexistent/prompts.json"], "--prompts"),
    (["bench", "--repeats", "0"], "--repeats"),
    (["bench", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["demo", "--pair", "/nonexistent"], "--pair"),
    (["demo", "--num-prompts", "0"], "--num-prompts"),
    (["demo", "--num-prompts", "-1"], "--num-prompts"),
    (["demo", "--budget", "0"], "--budget"),
    (["demo", "--policy", "bogus"], "--policy"),
    (["generate", "--dtype", "float99"], "--dtype"),
    (["generate", "--threads", "-1"], "--threads"),
    (["generate", "--threads", "0"], "--threads"),
    (["generate", "--target", "/nonexistent"], "--target"),
    (["generate", "--drafter", "/nonexistent"], "--drafter"),
    (["generate", "--policy", "bogus"], "--policy"),
    (["generate", "--budget", "-3"], "--budget"),
    (["generate", "--max-new-tokens", "-1"], "--max-new-tokens"),
    (["generate", "--temperature", "-0.5"], "--temperature"),
    (["generate", "--top-k", "0"], "--top-k"),
    (["generate", "--top-p", "1.5"], "--top-p"),
    (["generate", "--prompt", ""], "--prompt"),
    (["generate", "--prompt-file", "/nonexistent.txt"], "--prompt-file"),
    (["generate", "--device", "tpu"], "--device"),
    (["record-trace", "--prompt-ids", ""], "--prompt-ids"),
    (["record-trace", "--prompt-ids", "1 x 3"], "--prompt-ids"),
    (["record-trace", "--prompt-ids", "1 -2"], "--prompt-ids"),
    (["record-trace", "--budget", "0"], "--budget"),
    (["record-trace", "--out", "/nonexistent-dir/trace.pt"], "--out"),
    (["eval-policies", "/nonexistent.pt"], "trace"),
    (["eval-policies", __file__, "--budgets", "0"], "--budgets"),
    (["eval-policies", __file__, "--policies", "ar"], "--policies"),
    (["eval-policies", __file__, "--cost-table", "/nonexistent.json"], "--cost-table"),
    (["train-scorer", "/nonexistent.pt"], "traces"),
    (["train-scorer", __file__, "--target", "/nonexistent"], "--target"),
    (["train-drafter", "--target", "/nonexistent", "--out", "d"], "--target"),
    (["profile-cost", "--target", "no-such-preset"], "--target"),
    (["profile-cost", "--target", "tiny", "--nodes", "-1"], "--nodes"),
    (["profile-cost", "--target", "tiny", "--repeats", "0"], "--repeats"),
    (["demo-select", "--budgets", "0"], "--budgets"),
    (["demo-select", "--vocab", "0"], "--vocab"),
]


@pytest.mark.parametrize(
    ("args", "argument"), BAD_ARGS, ids=[" ".join(a).replace(__file__, "FILE") for a, _ in BAD_ARGS]
)
def test_bad_argument_is_one_line_before_any_import(
    args: list[str], argument: str, tmp_path: Path
) -> None:
    run = run_cli(args, tmp_path)
    assert_usage_error(run, argument)


def test_record_trace_out_is_a_directory(tmp_path: Path) -> None:
    out = tmp_path / "existing"
    out.mkdir()
    assert_usage_error(run_cli(["record-trace", "--out", str(out)], tmp_path), "--out")


def test_train_drafter_steps_and_out(tmp_path: Path) -> None:
    target = _model_dir(tmp_path / "target")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    base = ["train-drafter", "--target", str(target)]
    assert_usage_error(run_cli([*base, "--out", str(tmp_path / "d"), "--steps", "0"], tmp_path),
                       "--steps")  # fmt: skip
    assert_usage_error(run_cli([*base, "--out", str(blocker)], tmp_path), "--out")
    assert_usage_error(
        run_cli([*base, "--out", str(tmp_path / "d"), "--data", "/nonexistent"], tmp_path),
        "--data",
    )


def test_target_without_config_names_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    run = run_cli(["generate", "--target", str(empty)], tmp_path)
    assert_usage_error(run, "--target")
    assert "config.json" in run.stderr and "Repo id" not in run.stderr


def test_shipped_pair_env_must_exist(tmp_path: Path) -> None:
    run = run_cli(["generate"], tmp_path, env={"DIFFTREE_RT_PAIR": str(tmp_path / "none")})
    assert_usage_error(run, "DIFFTREE_RT_PAIR", torch_ok=True)


def test_empty_prompt_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    run = run_cli(["bench", "--prompts", str(empty)], tmp_path)
    assert_usage_error(run, "--prompts", torch_ok=True)


def test_budget_above_the_core_limit(tmp_path: Path) -> None:
    run = run_cli(["bench", "--budgets", "64", "100000"], tmp_path)
    assert_usage_error(run, "--budgets", torch_ok=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(tmp_path: Path) -> None:
    for cmd in (["generate"], ["bench"], ["demo"], ["record-trace"], ["demo-select"]):
        run = run_cli([*cmd, "--device", "cuda"], tmp_path)
        assert_usage_error(run, "--device", torch_ok=True)


@pytest.mark.parametrize(
    ("alias", "name"),
    [("bf16", "bfloat16"), ("bfloat16", "bfloat16"), ("fp16", "float16"),
     ("float16", "float16"), ("fp32", "float32"), ("float32", "float32"), ("BF16", "bfloat16")],
)  # fmt: skip
def test_dtype_aliases(alias: str, name: str) -> None:
    for cmd in ("generate", "bench", "demo", "record-trace", "profile-cost"):
        extra = ["--target", "tiny"] if cmd == "profile-cost" else []
        args = build_parser().parse_args([cmd, *extra, "--dtype", alias])
        assert args.dtype == name
        assert isinstance(getattr(torch, DTYPES[name]), torch.dtype)


def test_policy_choices_match_the_registry() -> None:
    from difftree_rt.eval.offline import POLICY_NAMES as OFFLINE
    from difftree_rt.policies import POLICIES

    assert set(POLICY_NAMES) == {"ar", *POLICIES}
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    evalp = sub.choices["eval-policies"]
    choices = next(a.choices for a in evalp._actions if a.dest == "policies")
    assert set(choices) == set(OFFLINE)


def test_models_load_offline_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every from_pretrained of the CLI passes local_files_only=True: never a hub request."""
    import transformers

    from difftree_rt.cli import pair

    seen: list[dict[str, object]] = []

    class Stop(Exception):
        pass

    def fake(*_a: object, **kw: object) -> None:
        seen.append(kw)
        raise Stop

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    with pytest.raises(Stop):
        pair.load_pair(_model_dir(tmp_path / "t"), None, "cpu", None)
    assert seen and all(kw.get("local_files_only") is True for kw in seen)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_policy_commands(tmp_path: Path) -> None:
    for cmd in (["profile-cost", "--target", "tiny"], ["train-drafter", "--target",
                str(_model_dir(tmp_path / "t")), "--out", str(tmp_path / "d")]):  # fmt: skip
        run = run_cli([*cmd, "--device", "cuda"], tmp_path)
        assert_usage_error(run, "--device", torch_ok=True)


def test_closed_stdout_is_not_an_error() -> None:
    """``difftree-rt info | head -0``: the reader is gone before anything is written."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "difftree_rt", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert err == "", err
