"""TensorBoard's own reader finds the predecessor's tags and the validation images."""

from __future__ import annotations

import asyncio

from helpers import wait_until
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SCALAR_TAGS = {
    "Loss/Total",
    "Loss/L1",
    "Loss/MS",
    "Loss/Gradient",
    "Loss/Perceptual",
    "Training/LearningRate",
    "Quality/Improvement",
    "Quality/KI_Quality",
    "Quality/LR_Quality",
    "Metrics/KI_PSNR",
    "Metrics/LR_PSNR",
    "Metrics/KI_SSIM",
    "Metrics/LR_SSIM",
    "Validation/Loss",
    "Performance/IterationDuration_s",
    "Performance/HostMemory_GB",
    "Activity/Backward_Block_01",
    "Activity/Forward_Block_01",
    "Activity/Final_Fusion",
}


async def test_event_files_hold_scalars_and_images(start_run) -> None:
    run = await start_run(VAL_STEP_EVERY=10, LOG_TBOARD_EVERY=2, HIST_STEP_EVERY=10)
    await wait_until(lambda: run.store.validation.count >= 2, run.store)
    result = run.store.validation.result
    await asyncio.wait_for(run.supervisor.stop("test"), 30)
    await asyncio.wait_for(run.supervisor.finished.wait(), 60)  # closes the event writer

    events = EventAccumulator(
        str(run.run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0}
    )
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) >= SCALAR_TAGS, SCALAR_TAGS - set(tags["scalars"])
    assert {"Val/sample_0000", "Val/sample_0001"} <= set(tags["images"])
    assert "Histograms/feat_extract.0.weight" in tags["histograms"]

    psnr = events.Scalars("Metrics/KI_PSNR")
    assert [e.step for e in psnr][:2] == [10, 20]
    assert abs(psnr[1].value - result.psnr_ki_db) < 1e-3  # the store's numbers, as float32
    lr_steps = [e.step for e in events.Scalars("Training/LearningRate")]
    assert lr_steps[:3] == [2, 4, 6]  # the logging cadence
    image = events.Images("Val/sample_0000")[-1]
    assert image.step == 20
    assert (image.width, image.height) == (3 * 48, 48)  # LR | output | GT of a 48x48 image
