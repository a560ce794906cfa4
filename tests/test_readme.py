"""README.md runs as written: every ```python block against the shipped reference pair, every
command a ```bash block names exists, every relative link resolves inside the repository.

"path/to/target", "path/to/dflash-drafter" and "path/to/vp-drafter" stand for the shipped pair's
directories (the README says so). Each block runs in a fresh namespace, except a block whose
introducing paragraph says "continuing", which runs in the previous block's namespace.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAIR = ROOT / "assets" / "reference_pair"
PLACEHOLDERS = {
    "path/to/target": PAIR / "target",
    "path/to/dflash-drafter": PAIR / "drafter",
    "path/to/vp-drafter": PAIR / "vp_drafter",
}
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _blocks(lang: str) -> list[tuple[str, str]]:
    """``(introducing paragraph, code)`` for each fenced block of ``lang``, in README order."""
    text = README.read_text(encoding="utf-8")
    out = []
    for m in _FENCE.finditer(text):
        if m.group(1) == lang:
            before = text[: m.start()].rstrip("\n")
            out.append((before.split("\n\n")[-1], m.group(2)))
    return out


def _substitute(code: str) -> str:
    for placeholder, path in PLACEHOLDERS.items():
        code = code.replace(f'"{placeholder}"', repr(str(path)))
    return code


PYTHON_BLOCKS = _blocks("python")


def test_readme_has_python_blocks_and_explains_placeholders() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(PYTHON_BLOCKS) >= 3
    used = {p for p in PLACEHOLDERS if any(p in code for _, code in PYTHON_BLOCKS)}
    assert used, "the examples load the shipped pair through path/to/... placeholders"
    assert "assets/reference_pair" in text and "path/to/" in text


def test_python_blocks_run_as_written() -> None:
    """All blocks in order, in one test: a "continuing" block needs its predecessor's names."""
    assert all(p.is_dir() for p in PLACEHOLDERS.values())
    namespace: dict[str, object] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shipped pair is tiny: more threads only contend on a shared CPU
    try:
        for i, (intro, code) in enumerate(PYTHON_BLOCKS):
            if "continuing" not in intro.lower():
                namespace = {"__name__": f"readme_block_{i}"}
            try:
                exec(compile(_substitute(code), f"README.md python block {i}", "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"README python block {i} failed: {e!r}\n{code}") from e
    finally:
        torch.set_num_threads(threads)


def _named_commands(code: str) -> list[list[str]]:
    """The argv of each command in a bash block (comments dropped, && chains split)."""
    cmds = []
    for line in code.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"&&|;|\|\|", line):
            argv = shlex.split(part)
            while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # VAR=value prefixes
                argv = argv[1:]
            if argv:
                cmds.append(argv)
    return cmds


@pytest.mark.parametrize("code", [c for _, c in _blocks("bash")])
def test_bash_blocks_name_existing_commands(code: str) -> None:
    cmds = _named_commands(code)
    assert cmds
    for argv in cmds:
        if argv[0] in ("bash", "python", "python3") and argv[1:] and not argv[1].startswith("-"):
            assert (ROOT / argv[1]).is_file(), f"{argv[1]} (in `{' '.join(argv)}`) does not exist"
        elif argv[0] not in ("bash", "python", "python3"):
            if argv[0] == "cmake" and not shutil.which("cmake"):
                pytest.skip("cmake is not installed")
            assert shutil.which(argv[0]), f"`{argv[0]}` is not on PATH"
            if argv[0] == "cmake" and "-S" in argv:
                assert (ROOT / argv[argv.index("-S") + 1] / "CMakeLists.txt").is_file()


def test_links_stay_inside_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)[^)]*\)", text)
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target = (ROOT / link).resolve()
        assert target.is_relative_to(ROOT), f"link {link} points outside the repository"
        assert target.exists(), f"link {link} does not exist"
    assert "../shared" not in text, "the README must stand alone (no ../shared references)"
