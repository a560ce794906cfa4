"""``difftree-rt bench``: repeats with median and p10/p90, a JSON stamped with what ran where,
plots with error bars, plain budget ticks and a title naming the run; the CPU thread default;
``--baseline`` (another checkout side by side: usage errors, a run against this checkout, the
worker importing the other checkout's package and extension)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import assert_usage_error, run_cli
from transformers import Qwen3Config, Qwen3ForCausalLM

import difftree_rt
from difftree_rt.cli import main
from difftree_rt.cli.bench_worker import find_extension
from difftree_rt.cli.pair import plot_results
from difftree_rt.cli.runtime import SMALL_MODEL_BYTES, setup_threads
from difftree_rt.models import DFlashDrafter

#: The source checkout this package is imported from (a baseline for itself, when it is built).
CHECKOUT = Path(difftree_rt.__file__).resolve().parents[2]
needs_built_checkout = pytest.mark.skipif(
    find_extension(CHECKOUT) is None, reason=f"{CHECKOUT} holds no built extension"
)


@pytest.fixture(scope="module")
def random_pair_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3 target and DFlash drafter (block 4) saved as a pair directory
    (no tokenizer: prompts are encoded byte-wise) with two prompts."""
    root = tmp_path_factory.mktemp("pair")
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, initializer_range=0.25,
        max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=None,
        eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    target = Qwen3ForCausalLM(cfg).eval()
    drafter = DFlashDrafter.for_target(
        target, num_layers=1, block_size=4, generator=torch.Generator().manual_seed(0)
    )
    target.save_pretrained(root / "target")
    drafter.save_pretrained(root / "drafter")
    (root / "prompts.json").write_text(json.dumps(["def f(x):\n", "class A:\n"]))
    return root


@pytest.fixture
def restore_threads() -> Any:
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_bench_repeats_spread_and_stamp(
    random_pair_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_threads: Any,
) -> None:
    import difftree_rt.cli.bench as bench

    titles: list[str] = []
    monkeypatch.setattr(bench, "plot_results", lambda res, out, title: titles.append(title) or [])
    out = tmp_path / "bench"
    rc = main(
        ["bench", "--target", str(random_pair_dir / "target"),
         "--drafter", str(random_pair_dir / "drafter"),
         "--prompts", str(random_pair_dir / "prompts.json"), "--max-new-tokens", "6",
         "--policies", "ar", "ddtree", "--budgets", "4", "8", "--repeats", "3",
         "--out", str(out), "--quiet", "--device", "cpu", "--cuda-graphs", "off"]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    payload = json.loads((out / "bench.json").read_text())
    assert payload["repeats"] == 3
    assert payload["device"] == "cpu" and payload["dtype"] == "float32"
    assert payload["threads"].startswith("1 torch thread")  # the small-model CPU default
    assert "1 torch thread" in printed
    versions = payload["versions"]
    assert versions["torch"] == torch.__version__
    assert versions["version"] and "git_sha" in versions and versions["transformers"]
    rows = payload["results"]
    assert [(r["policy"], r["budget"]) for r in rows] == [("ar", 0), ("ddtree", 4), ("ddtree", 8)]
    for r in rows:
        runs = r["tokens_per_s_runs"]
        assert len(runs) == 3 and r["repeats"] == 3
        assert min(runs) <= r["tokens_per_s_p10"] <= r["tokens_per_s"]
        assert r["tokens_per_s"] <= r["tokens_per_s_p90"] <= max(runs)
        assert sorted(runs)[1] == pytest.approx(r["tokens_per_s"])  # median of 3
        assert r["speedup_p10"] <= r["speedup_vs_ar"] <= r["speedup_p90"]
        assert r["identical_to_ar"] and r["same_tokens_every_repeat"]
    # AR against itself, repeat by repeat: exactly 1.
    assert rows[0]["speedup_p10"] == rows[0]["speedup_p90"] == 1.0
    (title,) = titles
    parts = ("/target (qwen3, ", "/drafter (", "cpu", "float32", "1 torch thread", "2 prompts x 6")
    for part in (*parts, "AR ", "tokens/s"):
        assert part in title, (part, title)


def _results() -> list[dict[str, Any]]:
    def row(policy: str, budget: int, tps: float, sp: float | None) -> dict[str, Any]:
        return {
            "policy": policy, "budget": budget, "tau": 1.0 + budget / 64,
            "tokens_per_s": tps, "tokens_per_s_p10": tps - 1, "tokens_per_s_p90": tps + 2,
            "speedup_vs_ar": sp, "speedup_p10": sp and sp - 0.1, "speedup_p90": sp and sp + 0.2,
            "accept_hist": [3, 2, 1],
        }  # fmt: skip

    return [row("ar", 0, 10.0, 1.0), row("ddtree", 16, 20.0, 2.0), row("ddtree", 64, 25.0, 2.5)]


def test_plots_have_error_bars_and_plain_budget_ticks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.container import ErrorbarContainer
    from matplotlib.figure import Figure

    figures: list[Figure] = []
    real = Figure.savefig

    def savefig(self: Figure, *args: Any, **kwargs: Any) -> None:
        figures.append(self)
        real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    paths = plot_results(_results(), tmp_path, "target t, drafter d; AR 10.0 tokens/s")
    assert [p.name for p in paths] == ["tau_speedup_vs_budget.png", "acceptance_histogram.png"]
    curves = figures[0]
    assert "AR 10.0 tokens/s" in curves.texts[0].get_text()  # the suptitle
    for ax in curves.axes:
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["16", "64"], labels
    tps_ax, speed_ax = curves.axes[1], curves.axes[2]
    for ax, lo, hi in ((tps_ax, 1.0, 2.0), (speed_ax, 0.1, 0.2)):
        (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        segments = bars.lines[2][0].get_segments()
        assert len(segments) == 2  # one bar per budget
        ys = sorted(segments[0][:, 1])
        med = 20.0 if ax is tps_ax else 2.0
        assert ys == pytest.approx([med - lo, med + hi])


def test_cpu_thread_default(tmp_path: Path, restore_threads: Any) -> None:
    small = tmp_path / "small"
    small.mkdir()
    (small / "model.safetensors").write_bytes(b"\0" * 1024)
    torch.set_num_threads(2)
    line = setup_threads(None, "cpu", [small])
    assert torch.get_num_threads() == 1 and line.startswith("1 torch thread")
    line = setup_threads(3, "cpu", [small])
    assert torch.get_num_threads() == 3 and "--threads" in line
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "model.safetensors", "wb") as f:
        f.truncate(SMALL_MODEL_BYTES + 1)  # sparse: no disk space used
    torch.set_num_threads(2)
    line = setup_threads(None, "cpu", [big])
    assert torch.get_num_threads() == 2 and "torch's default" in line


def test_demo_and_generate_print_the_threads_used(
    random_pair_dir: Path, capfd: pytest.CaptureFixture[str], restore_threads: Any
) -> None:
    torch.set_num_threads(2)
    rc = main(["demo", "--pair", str(random_pair_dir), "--max-new-tokens", "4",
               "--num-prompts", "1", "--device", "cpu", "--no-color"])  # fmt: skip
    assert rc == 0
    assert "threads: 1 torch thread (default" in capfd.readouterr().out
    assert torch.get_num_threads() == 1
    rc = main(["generate", "--target", str(random_pair_dir / "target"), "--drafter",
               str(random_pair_dir / "drafter"), "--max-new-tokens", "4", "--json",
               "--threads", "2", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["new_tokens"] >= 1  # stdout stays pure JSON
    assert "device cpu, 2 torch thread(s) (--threads)" in err


def test_baseline_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "nonexistent", tmp_path / "empty"):
        run = run_cli(["bench", "--baseline", str(path)], tmp_path)
        assert_usage_error(run, "--baseline")
    assert "python/difftree_rt" in run.stderr


@needs_built_checkout
def test_baseline_side_by_side(
    random_pair_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_threads: Any,
) -> None:
    import difftree_rt.cli.bench_baseline as side_by_side

    monkeypatch.setattr(side_by_side, "plot_results", lambda res, out, title: [])
    out = tmp_path / "bench"
    rc = main(
        ["bench", "--target", str(random_pair_dir / "target"),
         "--drafter", str(random_pair_dir / "drafter"),
         "--prompts", str(random_pair_dir / "prompts.json"), "--num-prompts", "1",
         "--max-new-tokens", "5", "--policies", "ar", "chain", "--repeats", "1",
         "--baseline", str(CHECKOUT), "--out", str(out), "--quiet", "--device", "cpu"]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| τ cur | τ base | tokens/s cur [p10, p90] | tokens/s base [p10, p90] |" in printed
    assert "| cur/base [p10, p90] | same tokens |" in printed
    rows = [ln for ln in printed.splitlines() if ln.startswith(("| ar ", "| chain "))]
    assert len(rows) == 2 and all(ln.endswith("| yes |") for ln in rows), rows
    payload = json.loads((out / "bench.json").read_text())
    base = payload["baseline"]
    for results in (payload["results"], base["results"]):
        assert [(r["policy"], r["budget"]) for r in results] == [("ar", 0), ("chain", 3)]
        assert all(r["tokens_per_s"] > 0 and r["repeats"] == 1 for r in results)
    ratios = base["current_over_baseline"]
    assert [(r["policy"], r["budget"]) for r in ratios] == [("ar", 0), ("chain", 3)]
    assert all(r["ratio"] > 0 and r["same_tokens"] for r in ratios)
    assert base["path"] == str(CHECKOUT) and not base["errors"]
    assert base["versions"]["package"] == str(CHECKOUT / "python" / "difftree_rt")
    assert Path(base["versions"]["extension"]).resolve().is_relative_to(CHECKOUT)
    assert base["versions"]["torch"] == torch.__version__
    assert payload["versions"]["extension"] and payload["versions"]["package"]
    if (CHECKOUT / ".git").exists():  # both checkouts' git shas are stamped
        assert payload["versions"]["checkout_git_sha"] and base["versions"]["checkout_git_sha"]
    assert (out / "baseline_comparison.png").stat().st_size > 0


@needs_built_checkout
def test_baseline_worker_imports_the_other_checkout(random_pair_dir: Path, tmp_path: Path) -> None:
    """A copy of the package with its extension: the baseline worker imports the copy (the
    editable install's redirecting finder does not win), the current worker what we import."""
    from difftree_rt.cli.bench_baseline import Side

    other = tmp_path / "other"
    pkg = other / "python" / "difftree_rt"
    shutil.copytree(
        CHECKOUT / "python" / "difftree_rt", pkg,
        ignore=shutil.ignore_patterns("__pycache__", "assets", "_C*"),
    )  # fmt: skip
    so = find_extension(CHECKOUT)
    assert so is not None
    shutil.copy2(so, pkg / so.name)
    load = {"cmd": "load", "target": str(random_pair_dir / "target"),
            "drafter": str(random_pair_dir / "drafter"), "device": "cpu", "dtype": "float32",
            "threads": 1}  # fmt: skip
    for checkout, package in ((str(other), pkg), (None, CHECKOUT / "python" / "difftree_rt")):
        side = Side("baseline" if checkout else "current", checkout)
        try:
            reply = side.ask(load)
        finally:
            side.close()
        assert reply["ok"], reply
        info = reply["info"]
        assert Path(info["package"]) == package.resolve()
        assert info["threads"] == 1 and info["block_size"] == 4
        if checkout:
            assert Path(info["extension"]) == (pkg / so.name).resolve()
