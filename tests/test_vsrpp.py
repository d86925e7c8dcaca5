"""MODEL = "vsrpp": the predecessor's VSRBidirectional_3x, and its checkpoints continued here.

`fixtures/vsrpp_reference.pt` was made once with the predecessor's own model code
(icebear74/ice_ki, vsr_plus_plus/core/model.py at 024edb8, which is not in this repository):
`torch.manual_seed(12)`, `VSRBidirectional_3x(n_feats=8, n_blocks=2, num_frames=5).eval()`,
input `torch.rand(2, 5, 3, 16, 16)`; the file holds its `state_dict()`, the input and the output.

The predecessor checkpoints below are built in its exact layout: `torch.save` of
`{step, model_state_dict, optimizer_state_dict, scheduler_state_dict: <its scheduler object,
pickled as vsr_plus_plus.training.lr_scheduler.AdaptiveLRScheduler, holding the AdamW object>,
metrics, timestamp}`, with its two optimizer groups (everything, then `fusion.conv.*` at 10x LR).
"""

from __future__ import annotations

import hashlib
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import CONTINUING, TINY_SETTINGS, cli_config, run_cli

from vsr_async.errors import CheckpointError, ConfigError
from vsr_async.files.checkpoints import (
    CHECKPOINT_DIR,
    check_compatible,
    list_checkpoints,
    load_checkpoint,
    saved_model_name,
)
from vsr_async.files.predecessor_checkpoint import (
    is_predecessor_checkpoint,
    list_predecessor_checkpoints,
    load_predecessor_checkpoint,
)
from vsr_async.nn.models import MODELS, build_model
from vsr_async.nn.vsrpp import VSRBidirectional_3x
from vsr_async.settings import build_config
from vsr_async.settings.run_keys import ModelName

FIXTURE = Path(__file__).parent / "fixtures" / "vsrpp_reference.pt"
VSRPP = {**TINY_SETTINGS, "MODEL": "vsrpp"}  # N_FEATS 8, N_BLOCKS 2, NUM_FRAMES 3, SCALE 3


# --- the model ---------------------------------------------------------------------------------


def test_outputs_equal_the_predecessor_code_on_its_weights() -> None:
    reference = torch.load(FIXTURE, weights_only=True)
    meta = reference["meta"]
    model = VSRBidirectional_3x(meta["n_feats"], meta["n_blocks"], meta["num_frames"]).eval()
    model.load_state_dict(reference["state_dict"], strict=True)
    with torch.no_grad():
        out = model(reference["input"])
    torch.testing.assert_close(out, reference["output"], rtol=0, atol=1e-5)
    # the reference is not just its bilinear base: the network part is large enough to differ
    base = F.interpolate(reference["input"][:, 2], scale_factor=3, mode="bilinear")
    assert (reference["output"] - base).abs().mean() > 0.05

    # training mode with gradient checkpointing and activity tracking: same numbers
    model.train()
    model.gradient_checkpointing = model.track_activity = True
    out = model(reference["input"])
    out.square().mean().backward()
    torch.testing.assert_close(out.detach(), reference["output"], rtol=0, atol=1e-5)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    activity = model.read_activity()
    assert list(activity) == model.activity_names()
    assert activity["Final_Fusion"] == pytest.approx(meta["activity"]["fusion"], rel=1e-5)


def test_model_names_and_config_rules() -> None:
    assert set(MODELS) == set(ModelName.__args__)
    assert build_config({}).MODEL == "vsrnet"  # our own model stays the default
    model = build_model("vsrpp", n_feats=8, n_blocks=4, num_frames=5, scale=3)
    assert isinstance(model, VSRBidirectional_3x)
    # parameter count of the predecessor's formula: (87 + 36h)F^2 + (67 + 4h)F + 3
    f, h = 8, 2
    expected = (87 + 36 * h) * f * f + (67 + 4 * h) * f + 3
    assert sum(p.numel() for p in model.parameters()) == expected
    with pytest.raises(ConfigError, match=r"SCALE.*must be 3 for MODEL = \"vsrpp\".*got 2"):
        build_config({"MODEL": "vsrpp", "SCALE": 2})
    with pytest.raises(ConfigError, match="MODEL"):
        build_config({"MODEL": "basicvsr"})
    assert build_config({"MODEL": "vsrpp", "N_BLOCKS": 25}).N_BLOCKS == 25  # as it accepted
    with pytest.raises(ConfigError, match=r"N_BLOCKS.*even"):
        build_config({"N_BLOCKS": 25})


# --- predecessor checkpoint files ----------------------------------------------------------------


@pytest.fixture
def predecessor_modules(monkeypatch: pytest.MonkeyPatch) -> type:
    """Its scheduler class under its own module path, so pickle writes the same GLOBAL."""

    class AdaptiveLRScheduler:
        def __init__(self, optimizer: torch.optim.Optimizer) -> None:
            self.optimizer = optimizer
            self.warmup_steps, self.max_steps, self.max_lr, self.min_lr = 1000, 100000, 1e-4, 1e-6
            self.current_phase, self.plateau_reductions = "cosine", 0

    AdaptiveLRScheduler.__module__ = "vsr_plus_plus.training.lr_scheduler"
    AdaptiveLRScheduler.__qualname__ = "AdaptiveLRScheduler"
    for name in ("vsr_plus_plus", "vsr_plus_plus.training", "vsr_plus_plus.training.lr_scheduler"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["vsr_plus_plus.training.lr_scheduler"].AdaptiveLRScheduler = AdaptiveLRScheduler  # type: ignore[attr-defined]
    return AdaptiveLRScheduler


def write_predecessor_checkpoint(
    path: Path, scheduler_cls: type, *, step: int, n_feats: int = 8, adam_steps: int = 3
) -> dict[str, torch.Tensor]:
    """A checkpoint as its CheckpointManager.save_checkpoint writes it; returns its weights."""
    torch.manual_seed(7)
    model = VSRBidirectional_3x(n_feats, 2, 3)
    fusion = [p for n, p in model.named_parameters() if "fusion.conv" in n]
    other = [p for n, p in model.named_parameters() if "fusion.conv" not in n]
    optimizer = torch.optim.AdamW(
        [
            {"params": other, "lr": 1e-4, "weight_decay": 1e-3},
            {"params": fusion, "lr": 1e-3, "weight_decay": 5e-4},
        ]
    )
    lr = torch.rand(2, 3, 3, 8, 8)
    for _ in range(adam_steps):
        optimizer.zero_grad()
        model(lr).square().mean().backward()
        optimizer.step()
    checkpoint = {
        "step": step,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler_cls(optimizer),
        "metrics": {"val_loss": 0.031, "ki_quality": 0.612, "lr_quality": 0.55},
        "timestamp": "2026-02-07T21:14:03.512345",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def learn(tmp_path: Path, predecessor_modules: type) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A predecessor Learn folder with one checkpoint at step 12345 (and its other files)."""
    folder = tmp_path / "OldLearn"
    weights = write_predecessor_checkpoint(
        folder / "checkpoint_step_0012345.pth", predecessor_modules, step=12345
    )
    (folder / "Statistik_12000.json").write_text('{"step_current": 12000}', encoding="utf-8")
    (folder / "training.log").write_text("[2026-02-07 21:14:03] started\n", encoding="utf-8")
    yield folder, weights


def test_a_predecessor_checkpoint_continues_at_its_step(
    tmp_path: Path, tiny_dataset: Path, learn: tuple[Path, dict[str, Any]]
) -> None:
    """Done-when 1: its file resumes via the CLI at its step, trains, our checkpoint is written
    into our run folder, and no byte of its folder changes."""
    folder, weights = learn
    source = folder / "checkpoint_step_0012345.pth"
    before = hashes(folder)
    data_root = tmp_path / "Learn"
    settings = {**VSRPP, "MAX_STEPS": 12348, "MAX_LR": 1e-5, "MIN_LR": 1e-6}
    config = cli_config(tmp_path / "run.toml", tiny_dataset, data_root, **settings)

    result = run_cli("train", "--config", str(config), "--no-web", "--resume", str(source))

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    match = CONTINUING.search(output)
    assert match and match.group(2) == "12345", output[-3000:]
    assert "VSR++ checkpoint" in output and "optimizer state" in output
    assert hashes(folder) == before  # nothing of its folder changed, nothing added

    # our own checkpoint, at the final step, in our run folder, recording the model
    [(step, path)] = list_checkpoints(data_root / CHECKPOINT_DIR)
    state = load_checkpoint(path)
    assert step == state["step"] == 12348
    assert saved_model_name(state) == "vsrpp"
    # its weights were the start: three small steps moved them by little (a fresh init is ~0.1 off)
    moved = max((state["model"][k] - v).abs().max().item() for k, v in weights.items())
    assert 0 < moved < 1e-3
    # its Adam moments were taken over: 3 steps there, 3 here
    adam_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {6.0}

    # a run of ours resumes that file of ours only with the same model
    with pytest.raises(CheckpointError, match="MODEL='vsrpp' \\(config has 'vsrnet'\\)"):
        check_compatible(state, build_config({**settings, "MODEL": "vsrnet"}), path)


def test_wrong_model_is_one_line_naming_the_file(
    tmp_path: Path, tiny_dataset: Path, learn: tuple[Path, dict[str, Any]]
) -> None:
    folder, _ = learn
    source = folder / "checkpoint_step_0012345.pth"
    data_root = tmp_path / "Learn"
    config = cli_config(tmp_path / "run.toml", tiny_dataset, data_root)  # MODEL: default vsrnet

    result = run_cli("train", "--config", str(config), "--no-web", "--resume", str(source))

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vsr_async: error: checkpoint ")
    assert str(source) in lines[0] and 'MODEL = "vsrpp"' in lines[0]
    assert not data_root.exists()  # refused before anything was written


def test_optimizer_that_does_not_fit_starts_fresh_with_a_warning(
    tmp_path: Path, tiny_dataset: Path, learn: tuple[Path, dict[str, Any]]
) -> None:
    """An optimizer state of another layout (here: the file's groups rearranged) is not taken
    over: one warning line, a fresh optimizer, and the weights and step still continue."""
    folder, _ = learn
    source = folder / "checkpoint_step_0012345.pth"
    raw = load_predecessor_checkpoint(source)
    assert raw.optimizer_state is not None
    groups = raw.optimizer_state["param_groups"]
    odd = {**raw.optimizer_state, "param_groups": [groups[1], groups[0]]}  # sizes 2 + 18
    other = tmp_path / "other" / "checkpoint_step_0000500.pth"
    other.parent.mkdir()
    torch.save(
        {"step": 500, "model_state_dict": raw.model_state, "optimizer_state_dict": odd}, other
    )
    data_root = tmp_path / "Learn"
    settings = {**VSRPP, "MAX_STEPS": 502}
    config = cli_config(tmp_path / "run.toml", tiny_dataset, data_root, **settings)

    result = run_cli("train", "--config", str(config), "--no-web", "--resume", str(other))

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    warning = [line for line in output.splitlines() if "optimizer state not taken over" in line]
    assert len(warning) == 1 and "fresh optimizer" in warning[0] and "2+18" in warning[0]
    state = load_checkpoint(list_checkpoints(data_root / CHECKPOINT_DIR)[0][1])
    assert state["step"] == 502
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {2.0}


def test_unreadable_and_misfitting_files_are_one_line_errors(
    tmp_path: Path, learn: tuple[Path, dict[str, Any]], predecessor_modules: type
) -> None:
    folder, _ = learn
    # a pickled object other than its scheduler and optimizer: refused, nothing of it runs
    odd = tmp_path / "checkpoint_step_0000100.pth"
    torch.save({"step": 100, "model_state_dict": {}, "optimizer_state_dict": {}, "x": Path()}, odd)
    with pytest.raises(CheckpointError, match=r"cannot be loaded safely: it holds a pickled "):
        load_predecessor_checkpoint(odd)
    # another shape than the config's: the keys named, with both values
    config = build_config({**VSRPP, "N_FEATS": 16})
    from vsr_async.files.predecessor_checkpoint import check_fits

    checkpoint = load_predecessor_checkpoint(folder / "checkpoint_step_0012345.pth")
    with pytest.raises(CheckpointError, match=r"N_FEATS=8, N_BLOCKS=2 \(config has N_FEATS=16"):
        check_fits(checkpoint, config)
    # recognised from the pickle's keys, not from the name; our own files are not its
    assert is_predecessor_checkpoint(folder / "checkpoint_step_0012345.pth")
    ours = tmp_path / "checkpoint_step_0000200.pth"
    torch.save({"format_version": 1, "step": 200, "model": {}, "optimizer": {}}, ours)
    assert not is_predecessor_checkpoint(ours)
    assert checkpoint.step == 12345 and checkpoint.metrics["ki_quality"] == pytest.approx(0.612)


def test_listing_newest_first(tmp_path: Path) -> None:
    folder = tmp_path / "Learn"
    folder.mkdir()
    names = [
        "checkpoint_step_0010000.pth",
        "checkpoint_step_0012345_emergency.pth",
        "checkpoint_step_0004500.pth",
        "checkpoint_step_9000.pth",  # its first versions did not pad the step
        "checkpoint_step_0010000.pth.BAK",  # its fresh-start backups: not checkpoints
        "checkpoint_emergency.pth",  # its first emergency name: step unknown (holds 0)
        "checkpoint_step_0012000_config_ref.json",
    ]
    for name in names:
        (folder / name).write_bytes(b"x")
    os.symlink("checkpoint_step_0004500.pth", folder / "checkpoint_best.pth")
    listed = [(f.step, f.path.name, f.kind) for f in list_predecessor_checkpoints(folder)]
    assert listed == [
        (12345, "checkpoint_step_0012345_emergency.pth", "emergency"),
        (10000, "checkpoint_step_0010000.pth", "regular"),
        (9000, "checkpoint_step_9000.pth", "best"),
        (4500, "checkpoint_step_0004500.pth", "best"),
    ]
    assert list_predecessor_checkpoints(tmp_path / "missing") == []
