"""``python -m difftree_rt`` — the command-line interface (same as ``difftree-rt``)."""

from difftree_rt.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
