"""Device and precision choice: which device, which autocast dtype, whether a grad scaler runs.

`AMP = "auto"` picks by what the card does natively: bf16 from compute capability 8.0 (Ampere
and newer), fp16 with a grad scaler on 7.x (Volta/Turing tensor cores), fp32 on older cards
(Pascal, e.g. a Tesla P4: no bf16, and fp16 far slower than fp32) and on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vsr_async.errors import ConfigError


@dataclass(frozen=True)
class PrecisionPlan:
    mode: str  # "bf16", "fp16" or "off"
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mode)

    @property
    def uses_grad_scaler(self) -> bool:
        return self.mode == "fp16"


def resolve_device(name: str) -> torch.device:
    """`DEVICE` → torch.device; "auto" is CUDA when available. Call on the GPU thread."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("DEVICE", f"{name!r} asked for, but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                "DEVICE", f"{name!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return device


def choose_precision(
    requested: str, device_type: str, capability: tuple[int, int] | None = None
) -> PrecisionPlan:
    """The precision for `requested` (AMP) on a device; `capability` is CUDA's (major, minor).

    An explicit choice is honoured where the device can run it, and is an error where it cannot.
    """
    if device_type == "cuda" and capability is None:
        raise ValueError("a CUDA device needs its compute capability")
    cap = capability or (0, 0)  # read only on CUDA, where it is given (checked above)
    cc = f"{cap[0]}.{cap[1]}"
    if requested == "off":
        return PrecisionPlan("off", "AMP=off: fp32 as configured")
    if requested == "auto":
        if device_type != "cuda":
            return PrecisionPlan("off", f"fp32 on the {device_type.upper()} (AMP=auto)")
        if cap >= (8, 0):
            return PrecisionPlan("bf16", f"bf16: compute capability {cc} runs it natively")
        if cap >= (7, 0):
            return PrecisionPlan(
                "fp16",
                f"fp16 + grad scaler: compute capability {cc} has fp16 "
                "tensor cores but no native bf16",
            )
        return PrecisionPlan(
            "off", f"fp32: compute capability {cc} has neither native bf16 nor fast fp16"
        )
    if requested == "bf16":
        if device_type == "cuda" and cap < (8, 0):
            raise ConfigError(
                "AMP",
                f'"bf16" needs compute capability >= 8.0; this GPU has {cc} '
                '(use "auto", "fp16" or "off")',
            )
        return PrecisionPlan("bf16", "AMP=bf16 as configured")
    if requested == "fp16":
        if device_type == "cuda" and cap < (6, 0):
            raise ConfigError(
                "AMP",
                f'"fp16" needs compute capability >= 6.0; this GPU has {cc} (use "auto" or "off")',
            )
        return PrecisionPlan("fp16", "AMP=fp16 as configured (with grad scaler)")
    raise ConfigError("AMP", f"unknown mode {requested!r}")


def precision_for(requested: str, device: torch.device) -> PrecisionPlan:
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return choose_precision(requested, device.type, capability)
