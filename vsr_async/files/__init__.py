"""files: what a run writes and reads on disk — atomic writes, Statistik files, the checkpoint
file format and retention rules, TensorBoard events, training.log, the run lock and superseded
files.

Imports only the top-level modules (`errors`, `names`, `metrics`, `records`): never `runtime`,
`training`, `nn`, `terminal` or `web`. Whatever schedules the writes lives in `runtime`.
"""
