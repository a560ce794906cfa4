"""The build: what it reports, what it links, and the `info` command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import difftree_rt
from difftree_rt import _C  # type: ignore[attr-defined]


def test_build_info_keys() -> None:
    info = difftree_rt.build_info()
    for key in (
        "cuda_compiled",
        "cuda_architectures",
        "cuda_version",
        "compiler",
        "git_sha",
        "version",
        "torch",
        "python",
    ):
        assert key in info
    assert info["version"] == difftree_rt.__version__
    policies = info["policies"].split(", ")
    assert {"ar", "chain", "ddtree", "caddtree", "presto", "taps", "d2sd", "auto"} <= set(policies)
    graph = info["graph_mode_policies"].split(", ")
    # Every built-in policy runs in graph mode ("auto": one captured graph per mode and bucket).
    assert set(graph) == set(policies)
    if info["cuda_compiled"]:
        archs = info["cuda_architectures"].split(",")
        assert "80" in archs and "90a" in archs
        assert info["cuda_version"]
    else:
        assert info["cuda_architectures"] == ""


@pytest.mark.skipif(shutil.which("ldd") is None, reason="needs ldd")
def test_extension_links_neither_torch_nor_cuda_driver() -> None:
    # One build must import on machines without a GPU driver and with any torch version.
    out = subprocess.run(["ldd", _C.__file__], capture_output=True, text=True, check=True).stdout
    for lib in ("libtorch", "libc10", "libcuda.so", "libcudart"):
        assert lib not in out, f"_C links {lib}:\n{out}"


def test_info_command_text_and_json() -> None:
    text = subprocess.run(
        [sys.executable, "-m", "difftree_rt", "info"], capture_output=True, text=True, check=True
    ).stdout
    assert "cuda_compiled" in text and "git_sha" in text
    js = subprocess.run(
        [sys.executable, "-m", "difftree_rt", "info", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(js)["version"] == difftree_rt.__version__


def test_demo_runs_small() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "difftree_rt",
            "demo",
            "--vocab",
            "5000",
            "--budgets",
            "8",
            "64",
            "--repeats",
            "2",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "root" in out and "budget" in out
    assert out.count("\n") > 10


def test_extension_override_env(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """DIFFTREE_RT_EXT loads the core from another build (used for the sanitizer test run)."""
    code = "import difftree_rt._ext as e; print(e._C.__file__)"
    env = dict(__import__("os").environ, DIFFTREE_RT_EXT=_C.__file__)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    assert out == _C.__file__
    env["DIFFTREE_RT_EXT"] = str(tmp_path / "missing.so")
    bad = subprocess.run(
        [sys.executable, "-c", "from difftree_rt import ops; ops.topk_logprobs"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 0  # importing ops is fine; using the core raises a clear ImportError
    use = subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch; from difftree_rt import ops; ops.topk_logprobs(torch.zeros(1, 1, 2), 1)",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert use.returncode != 0 and "difftree_rt._C" in use.stderr
