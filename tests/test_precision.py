"""Precision by device capability (AMP): the choice for each GPU generation and the CPU, explicit
choices honoured or refused with a clear error, and the choice in the log and the snapshot."""

from __future__ import annotations

import pytest
from helpers import wait_until

from vsr_async.errors import ConfigError, VsrError
from vsr_async.training.precision import choose_precision


@pytest.mark.parametrize(
    ("capability", "mode", "scaler", "reason"),
    [
        ((6, 1), "off", False, "6.1 has neither native bf16 nor fast fp16"),  # Pascal: Tesla P4
        ((7, 0), "fp16", True, "7.0 has fp16 tensor cores but no native bf16"),  # Volta: V100
        ((7, 5), "fp16", True, "7.5 has fp16 tensor cores but no native bf16"),  # Turing: T4
        ((8, 0), "bf16", False, "8.0 runs it natively"),  # Ampere: A100
        ((9, 0), "bf16", False, "9.0 runs it natively"),  # Hopper: H100
    ],
)
def test_auto_picks_by_compute_capability(
    capability: tuple[int, int], mode: str, scaler: bool, reason: str
) -> None:
    plan = choose_precision("auto", "cuda", capability)
    assert plan.mode == mode
    assert plan.uses_grad_scaler is scaler
    assert reason in plan.reason


def test_auto_on_the_cpu_is_fp32() -> None:
    plan = choose_precision("auto", "cpu")
    assert (plan.mode, plan.autocast_dtype, plan.uses_grad_scaler) == ("off", None, False)
    assert plan.reason == "fp32 on the CPU (AMP=auto)"


@pytest.mark.parametrize(
    ("requested", "capability", "mode"),
    [
        ("off", (9, 0), "off"),
        ("fp16", (8, 0), "fp16"),  # slower than bf16 there, but asked for: honoured
        ("fp16", (6, 1), "fp16"),  # slow on Pascal, but it runs
        ("bf16", (8, 6), "bf16"),
    ],
)
def test_explicit_choices_the_device_can_run_are_honoured(
    requested: str, capability: tuple[int, int], mode: str
) -> None:
    plan = choose_precision(requested, "cuda", capability)
    assert plan.mode == mode
    assert "as configured" in plan.reason


@pytest.mark.parametrize(
    ("requested", "capability", "message"),
    [
        ("bf16", (7, 5), '"bf16" needs compute capability >= 8.0; this GPU has 7.5'),
        ("bf16", (6, 1), '"bf16" needs compute capability >= 8.0; this GPU has 6.1'),
        ("fp16", (5, 2), '"fp16" needs compute capability >= 6.0; this GPU has 5.2'),
    ],
)
def test_an_impossible_explicit_choice_is_a_clear_error(
    requested: str, capability: tuple[int, int], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        choose_precision(requested, "cuda", capability)
    assert isinstance(caught.value, VsrError)  # the CLI prints it as one line and exits 1
    assert caught.value.key == "AMP"
    assert str(caught.value).startswith(f"config key AMP: {message}")


async def test_the_choice_and_its_reason_are_logged_and_in_the_snapshot(start_run) -> None:
    run = await start_run()
    await wait_until(lambda: run.store.progress.step >= 1, run.store, timeout=60)
    runtime = run.store.snapshot()["runtime"]
    assert runtime["precision"] == "off"
    assert runtime["precision_reason"] == "fp32 on the CPU (AMP=auto)"
    run.supervisor.stop("test")
    await wait_until(lambda: run.supervisor.finished.is_set(), run.store, timeout=60)
    log_text = (run.run_dir / "training.log").read_text()
    assert "precision: off (fp32 on the CPU (AMP=auto))" in log_text
