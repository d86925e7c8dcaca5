"""Commands around training: apply, score, feed and ship a trained model (`upscale`,
`evaluate`, `prepare`, `export`), each a subcommand of `python -m vsr_async`.

Owns: each tool's arguments, its work and its progress line. Built on the same model (`nn`),
tiling, data layouts (`data`), checkpoint files (`files`) and settings as training.
Must not touch: the runtime (no event loop, no store, no panel) or the terminal dashboard.

A tool module offers `add_parser(sub)` (its argparse subcommand) and `run(args) -> int`; the
CLI lists the modules in `TOOLS`.
"""

from __future__ import annotations

TOOLS: tuple[str, ...] = (
    "upscale",
    "evaluate",
    "prepare",
    "export",
    "checkpoints",
)  # module names under vsr_async.tools, in the order `--help` shows
