"""runtime: the event loop that owns a run — supervisor, commands, the GPU worker, the store,
live config, the checkpointer and the wiring of one run (`launch`).

May import `training`, `nn`, `data`, `files` and the top-level modules; never `terminal` or
`web`, which sit above it.
"""
