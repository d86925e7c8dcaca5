"""torchrun training is the single-process training of the global batch (issue 14, Done-when 1):
real `torchrun --standalone --nproc_per_node 2` jobs (gloo, tiny model) against plain
`python -m vsr_async train` runs on the same data and seed.

- weights: 2 ranks x BATCH_SIZE 2 for 8 steps hold the weights of 1 process x BATCH_SIZE 4
  (within float tolerance: DDP averages two half-batch gradients), both ranks the same bits;
- validation: one Statistik file per validation, written by rank 0, whose numbers equal a
  single-process validation of the step's checkpoint, bit for bit;
- resume across world sizes: 2 ranks to step 4, then 1 process to step 8 (and the reverse) ends
  where 1 process straight to step 8 ends: the sample stream continues at the same position.

Every job runs once per module (`jobs`), the independent ones at the same time, so the file pays
the ~5 s torchrun start-up a few times in parallel rather than once per assertion. Each job has
one intra-op thread (conftest sets OMP_NUM_THREADS=1; torchrun sets it for its ranks too), so the
CPU reductions of compared runs add in the same order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import CONTINUING, TINY_SETTINGS, CliRun, read_json, write_patch_dataset, write_toml

from vsr_async.data.layout import scan_configured
from vsr_async.data.loader import build_datasets
from vsr_async.files.checkpoints import CHECKPOINT_DIR, checkpoint_name, load_checkpoint
from vsr_async.files.statistics import list_statistics, statistics_name
from vsr_async.nn.models import build_model
from vsr_async.records import ValidationResult
from vsr_async.settings import Config, build_config
from vsr_async.training.validation import run_validation

STEPS = 8  # every compared run ends here
HALF = 4  # where the first part of a resumed run stops
VAL_IMAGES = 5  # odd: rank 0 validates 3 images, rank 1 validates 2
RTOL = ATOL = 1e-5  # DDP's mean of two half-batch means vs one mean: float rounding only

# Identical for every run here; only BATCH_SIZE, MAX_STEPS and the folder differ.
SETTINGS: dict[str, Any] = {
    **TINY_SETTINGS,
    "MAX_STEPS": STEPS,
    # The cosine's span is MAX_STEPS - WARMUP_STEPS, so the rate of step s depends on MAX_STEPS
    # only for s > WARMUP_STEPS (steps are 0-based; step WARMUP_STEPS gets MAX_LR whatever the
    # span). With WARMUP_STEPS = HALF the first part of a resumed run can stop by MAX_STEPS=HALF:
    # its steps 0..HALF-1 are all warmup, with the rates of a MAX_STEPS=STEPS run, and the second
    # part runs with MAX_STEPS=STEPS, so every step of every compared run has the same rate. A
    # deterministic stop at exactly step HALF, with a final checkpoint there, and no signal race.
    "WARMUP_STEPS": HALF,
    "VAL_STEP_EVERY": 4,
    "SAVE_STEP_EVERY": 4,
    "LOG_TBOARD_EVERY": 4,
    "EMA_DECAY": 0.0,  # validation uses the live weights, the ones in the checkpoint's "model"
    # Fixed loss weights, no LR boost, a fixed clip: nothing adaptive can differ between the runs.
    # The clip is below the global gradient norms here (window means ~0.03), so the steps are
    # clipped: a rank that clipped its own gradients rather than the averaged ones would drift.
    "ADAPTIVE_LOSS_WEIGHTS": False,
    "ADAPTIVE_LR_BOOST_FACTOR": 1.0,
    "ADAPTIVE_GRAD_CLIP": False,
    "INITIAL_GRAD_CLIP": 0.01,
}

SAME_WEIGHTS = re.compile(r"every rank holds the same weights at step (\d+) \(sha256 (\w+)\)")
RANK1_WEIGHTS = re.compile(r"^\[rank 1\] .*weights at step (\d+): sha256 (\w+)", re.M)


@dataclass
class Job:
    """One finished command: its run folder, exit code and console lines (all ranks')."""

    folder: Path
    code: int
    output: str

    def model(self, step: int = STEPS) -> dict[str, torch.Tensor]:
        return load_checkpoint(self.checkpoint(step))["model"]

    def checkpoint(self, step: int = STEPS) -> Path:
        return self.folder / CHECKPOINT_DIR / checkpoint_name(step)


def settings(folder: Path, dataset: Path, **overrides: Any) -> dict[str, Any]:
    return {**SETTINGS, "DATASET_ROOT": str(dataset), "DATA_ROOT": str(folder), **overrides}


async def run_job(folder: Path, values: dict[str, Any], *, ranks: int, resume: str) -> Job:
    """Train with `values` (written to a config file of its own) with 1 process or `ranks`."""
    index = len(list(folder.parent.glob(f"{folder.name}*.toml")))
    config = write_toml(folder.parent / f"{folder.name}{index}.toml", values)
    args = ("--no-web", "--resume", resume)
    start: Awaitable[CliRun]
    if ranks == 1:
        start = CliRun.start(config, *args)
    else:
        start = CliRun.torchrun(config, "--standalone", "--nproc_per_node", str(ranks), args=args)
    run = await start
    try:
        code = await run.finish(240)
    finally:
        await run.close()
    return Job(folder, code, run.output)


async def resumed_job(
    folder: Path, dataset: Path, first_ranks: int, second_ranks: int
) -> tuple[Job, Job | None]:
    """To step HALF with `first_ranks` (global batch 4), then on to STEPS with `second_ranks`."""

    def values(ranks: int, max_steps: int) -> dict[str, Any]:
        return settings(folder, dataset, BATCH_SIZE=4 // ranks, MAX_STEPS=max_steps)

    first = await run_job(folder, values(first_ranks, HALF), ranks=first_ranks, resume="never")
    if first.code != 0:
        return first, None
    second = await run_job(folder, values(second_ranks, STEPS), ranks=second_ranks, resume="auto")
    return first, second


@dataclass
class Jobs:
    dataset: Path
    ddp: Job  # 2 ranks x BATCH_SIZE 2, validating at steps 4 and 8
    single4: Job  # 1 process x BATCH_SIZE 4: the same global batch
    single2: Job  # 1 process x BATCH_SIZE 2: what 2 ranks drawing the same samples would train
    two_then_one: tuple[Job, Job | None]
    one_then_two: tuple[Job, Job | None]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    root = tmp_path_factory.mktemp("torchrun_training")
    dataset = write_patch_dataset(root / "dataset", val=VAL_IMAGES)

    async def all_jobs() -> Jobs:
        def plain(name: str, batch: int, ranks: int) -> Awaitable[Job]:
            values = settings(root / name, dataset, BATCH_SIZE=batch)
            return run_job(root / name, values, ranks=ranks, resume="never")

        done = await asyncio.gather(
            plain("ddp", 2, ranks=2),
            plain("single4", 4, ranks=1),
            plain("single2", 2, ranks=1),
            resumed_job(root / "two_then_one", dataset, 2, 1),
            resumed_job(root / "one_then_two", dataset, 1, 2),
        )
        return Jobs(dataset, *done)

    return asyncio.run(all_jobs())


def finished(job: Job | None, steps: int = STEPS) -> Job:
    """The job, having ended with exit 0 at MAX_STEPS=`steps`."""
    assert job is not None, "the first part failed"
    assert job.code == 0, job.output[-4000:]
    assert f"finished: MAX_STEPS={steps} reached" in job.output, job.output[-4000:]
    return job


def max_abs_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def all_close(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=RTOL, atol=ATOL) for k in a)


def fingerprint(model: Mapping[str, torch.Tensor]) -> str:
    """The engine's weights_fingerprint of a checkpoint's weights (names and bytes, sha256)."""
    digest = hashlib.sha256()
    for name, value in model.items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def ranks_hold_the_saved_weights(job: Job, step: int) -> None:
    """Every rank of a torchrun job holds the same bits at its end: rank 0 compares the ranks'
    fingerprints, rank 1 logs its own; both are the fingerprint of the saved weights."""
    saved = fingerprint(job.model(step))
    assert SAME_WEIGHTS.findall(job.output) == [(str(step), saved)], job.output[-3000:]
    assert RANK1_WEIGHTS.findall(job.output) == [(str(step), saved)], job.output[-3000:]
    assert "weights differ" not in job.output


# --- weights -------------------------------------------------------------------------------------


def test_two_ranks_train_the_weights_of_one_process_with_the_global_batch(jobs: Jobs) -> None:
    ddp, single4, single2 = finished(jobs.ddp), finished(jobs.single4), finished(jobs.single2)
    assert "rank 1 of 2 joined" in ddp.output
    weights, reference = ddp.model(), single4.model()
    diff = max_abs_diff(weights, reference)
    print(f"2 ranks x 2 vs 1 x 4 after {STEPS} steps: max abs diff {diff:.3g}")
    close = all_close(weights, reference)
    assert close, f"max abs diff {diff}"
    start = load_checkpoint(ddp.checkpoint(HALF))["model"]
    assert max_abs_diff(start, weights) > 100 * ATOL  # the weights moved: the steps trained

    # Two ranks on the same two samples would train 1 x 2's weights (the ranks' mean of the same
    # gradient is that gradient): far outside the tolerance the comparison above uses.
    wrong = single2.model()
    print(f"2 ranks x 2 vs 1 x 2: max abs diff {max_abs_diff(weights, wrong):.3g}")
    close = all_close(weights, wrong)
    assert not close
    assert max_abs_diff(weights, wrong) > 10 * ATOL

    ranks_hold_the_saved_weights(ddp, STEPS)

    for job in (ddp, single4):  # a checkpoint counts global samples, whatever the world size
        assert load_checkpoint(job.checkpoint())["samples_consumed"] == STEPS * 4


def test_logged_losses_are_the_whole_jobs_means(jobs: Jobs) -> None:
    """Each rank's window holds its own batch's losses; the logging step averages them over the
    ranks, so the Statistik files show the losses of the global batch (those of 1 x 4)."""
    ddp, single4 = finished(jobs.ddp), finished(jobs.single4)
    keys = ("total_loss_value", "l1_loss_value", "ms_loss_value", "gradient_loss_value")
    for step in (HALF, STEPS):
        got = read_json(ddp.folder / f"Statistik_{step}.json")
        want = read_json(single4.folder / f"Statistik_{step}.json")
        for key in keys:
            assert got[key] == pytest.approx(want[key], rel=1e-5), (step, key)
        assert got[keys[0]] > 0


# --- validation and Statistik ------------------------------------------------------------------


def single_validation(job: Job, dataset: Path, step: int) -> ValidationResult:
    """Validate checkpoint_<step>.pt in this process, one rank, on the set the engine builds."""
    config: Config = build_config(settings(job.folder, dataset, BATCH_SIZE=2))
    _, val_set = build_datasets(config, scan_configured(config))
    model = build_model(
        config.MODEL,
        n_feats=config.N_FEATS,
        n_blocks=config.N_BLOCKS,
        num_frames=config.NUM_FRAMES,
        scale=config.SCALE,
    )
    model.load_state_dict(job.model(step))
    return run_validation(
        model,
        val_set,
        device=torch.device("cpu"),
        scale=config.SCALE,
        num_frames=config.NUM_FRAMES,
        autocast=contextlib.nullcontext,
    )


def no_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


AGGREGATES = {
    "quality_lr_value": "quality_lr",
    "quality_ki_value": "quality_ki",
    "quality_improvement_value": "quality_improvement",
    "quality_ki_to_gt_value": "quality_ki_to_gt",
    "quality_lr_to_gt_value": "quality_lr_to_gt",
    "validation_loss_value": "loss",
    "psnr_lr_db": "psnr_lr_db",
    "psnr_ki_db": "psnr_ki_db",
    "psnr_gain_db": "psnr_gain_db",
    "ssim_lr": "ssim_lr",
    "ssim_ki": "ssim_ki",
    "psnr_y_lr_db": "psnr_y_lr_db",
    "psnr_y_ki_db": "psnr_y_ki_db",
    "psnr_y_gain_db": "psnr_y_gain_db",
    "ssim_y_lr": "ssim_y_lr",
    "ssim_y_ki": "ssim_y_ki",
}


def test_one_statistik_per_validation_equal_to_a_single_process_validation(
    jobs: Jobs,
) -> None:
    ddp = finished(jobs.ddp)
    assert f"run directory {ddp.folder}" in ddp.output
    steps = list(range(4, STEPS + 1, 4))
    assert [step for step, _ in list_statistics(ddp.folder)] == steps
    assert sorted(p.name for p in ddp.folder.glob("*Statistik*")) == sorted(
        statistics_name(step) for step in steps
    )  # and no temp file or second copy
    for step in steps:  # written once, by rank 0; rank 1 validated its share at the same step
        assert ddp.output.count(f"statistics: wrote {statistics_name(step)}") == 1
        assert re.search(rf"^\[rank 1\] \S+ validation started at step {step}$", ddp.output, re.M)
    assert "[rank 1]" not in "".join(
        line for line in ddp.output.splitlines(keepends=True) if "Statistik" in line
    )

    for step in steps:
        written = read_json(ddp.folder / statistics_name(step))
        assert (written["validation_step"], written["world_size"], written["global_batch"]) == (
            step,
            2,
            4,
        )
        assert written["validation_count"] == step // 4
        expected = single_validation(ddp, jobs.dataset, step)
        assert len(expected.images) == VAL_IMAGES
        images = [
            {k: no_nan(v) if isinstance(v, float) else v for k, v in m.to_dict().items()}
            for m in expected.images
        ]
        assert written["validation_images"] == images  # every image, in order, bit for bit
        got = {key: written[key] for key in AGGREGATES}
        want = {key: no_nan(getattr(expected, name)) for key, name in AGGREGATES.items()}
        assert got == want
        print(f"Statistik_{step}.json == single-process validation: quality {got}")


# --- resume with another world size ------------------------------------------------------------


@pytest.mark.parametrize("order", ["two_then_one", "one_then_two"])
def test_resume_with_another_world_size_continues_the_sample_stream(jobs: Jobs, order: str) -> None:
    first, second = getattr(jobs, order)
    first = finished(first, HALF)
    second = finished(second)
    stopped = first.checkpoint(HALF)
    assert load_checkpoint(stopped)["samples_consumed"] == HALF * 4
    match = CONTINUING.search(second.output)
    assert match is not None, second.output[-3000:]
    assert (Path(match.group(1)), int(match.group(2))) == (stopped, HALF)
    if order == "two_then_one":
        ranks_hold_the_saved_weights(first, HALF)
    else:  # rank 1 started from rank 0's resumed state
        ranks_hold_the_saved_weights(second, STEPS)
    assert load_checkpoint(second.checkpoint())["samples_consumed"] == STEPS * 4

    straight = finished(jobs.single4).model()
    weights = second.model()
    diff = max_abs_diff(weights, straight)
    print(f"{order}: max abs diff to 1 x 4 straight {diff:.3g}")
    close = all_close(weights, straight)
    assert close, f"max abs diff {diff}"
    # the first part's own weights are far from the end: the second part trained 4 steps
    assert max_abs_diff(load_checkpoint(stopped)["model"], straight) > 100 * ATOL
