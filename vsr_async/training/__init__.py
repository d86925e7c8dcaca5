"""training: the synchronous engine that runs on the GPU thread — one optimizer step, batch
planning and the memory probe, precision, the adaptive system, the LR schedule, validation,
on-device step sums and RNG state.

May import `nn`, `data` and the top-level modules; never `runtime`, `files`, `terminal` or `web`,
and nothing of asyncio: the runtime calls into it through `runtime.worker.GpuWorker`.
"""
