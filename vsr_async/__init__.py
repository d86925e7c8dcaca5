"""vsr_async: an asyncio training runtime for video super-resolution, in layers (DESIGN §1).

Imports point one way: `nn` ← `training` ← `runtime` → `files`; `terminal` (and the top-level
`web` package) use `runtime`; `data` feeds `training`. The top-level modules (`errors`, `names`,
`metrics`, `records`) may be imported by every layer and import none; `settings` (the config
schema and loader) imports only them and may be imported by every layer but `nn`. `__main__` is
the CLI and composition root, the one module that knows them all. `tests/test_layers.py` holds
the rule.
"""

__version__ = "0.1.0"  # the one home of the version: pyproject.toml reads it from here
