"""nn: pure torch modules — the model, losses, the perceptual network, EMA weights, tiling.

Compute only: no asyncio, no file writes, no `config`, no other layer. Imports nothing of
vsr_async but the top-level modules (`errors`, `names`, `metrics`, `records`).
"""
