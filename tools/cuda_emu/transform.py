"""Rewrites a CUDA source for the cuda_emu host build: ``k<<<grid, block, smem, stream>>>(args)``
becomes ``::emu::launch(k, grid, block, smem, stream, args)``, the dynamic shared-memory
declaration reads the emulator's buffer, and ``namespace difftree::cuda`` becomes
``difftree::cuda_emu`` (so the emulated launchers never clash with the real ones).

    python tools/cuda_emu/transform.py cuda/presto.cu build/emu/presto.cu.cpp
"""

from __future__ import annotations

import re
import sys


def transform(src: str) -> str:
    src = re.sub(
        r"extern __shared__ (?:__align__\(\d+\) )?([\w:]+(?: [\w:]+)*) (\w+)\[\];",
        r"\1* \2 = reinterpret_cast<\1*>(::emu::dyn_smem());",
        src,
    )

    def launch(m: re.Match[str]) -> str:
        kernel, cfg, args = m.group(1), m.group(2), m.group(3)
        parts = [p.strip() for p in re.split(r",(?![^()<>]*[)>])", cfg)]
        if len(parts) != 4:
            raise ValueError(f"launch of {kernel} needs <<<grid, block, smem, stream>>>: {cfg}")
        return f"::emu::launch({kernel}, {', '.join(parts)}, {args});"

    src, n = re.subn(r"([\w:]+(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);", launch, src, flags=re.S)
    if n == 0:
        raise ValueError("no kernel launch found")
    # The emulated launchers' declarations (launchers_emu_header), so a launcher calling
    # another (caddtree -> ddtree) reaches the emulated one.
    src = src.replace('#include "launchers.h"', '#include "launchers.h"\n#include "launchers_emu.h"')
    # The source's own definitions move to cuda_emu; the device helpers it includes stay in
    # difftree::cuda and are reached through a using-directive.
    return src.replace(
        "namespace difftree::cuda {",
        "namespace difftree::cuda_emu {\nusing namespace ::difftree::cuda;",
    )


def launchers_emu_header(launchers_h: str) -> str:
    """``cuda/launchers.h`` with its declarations in ``difftree::cuda_emu``."""
    out = launchers_h.replace("namespace difftree::cuda {", "namespace difftree::cuda_emu {")
    return out.replace("}  // namespace difftree::cuda", "}  // namespace difftree::cuda_emu")


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        out = transform(f.read())
    with open(sys.argv[2], "w") as f:
        f.write(out)
