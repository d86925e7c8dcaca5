"""VGG16 feature extractor for the perceptual loss, with torchvision's weights layout.

The weights come from PERCEPTUAL_WEIGHTS_PATH, or, when it is empty, from torchvision's ImageNet
file `vgg16-397923af.pth` in torch.hub's cache (`torch.hub.get_dir()/checkpoints`, the folder
torchvision itself uses), downloaded there once when it is missing; no torchvision needed. Any
problem is one `ConfigError` naming the key and the file. Loading runs where the model is built
(the GPU thread). The network is frozen and always in eval mode.
"""

from __future__ import annotations

import logging
import os
import urllib.error
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from vsr_async.errors import ConfigError

log = logging.getLogger(__name__)

PerceptualLayer = Literal["relu3_3", "relu4_3"]

# torchvision's VGG16 ImageNet weights (IMAGENET1K_V1), the ones the predecessor trained with.
VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
_VGG16_SHA256_PREFIX = "397923af"  # torchvision's names carry the start of the file's sha256

_KEY = "PERCEPTUAL_WEIGHTS_PATH"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Number of torchvision `vgg16().features` modules up to and including each ReLU.
_DEPTH = {"relu3_3": 16, "relu4_3": 23}


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)


def _vgg16_features(layer: PerceptualLayer) -> nn.Sequential:
    """torchvision's `vgg16().features`, cut after `layer`; indices match its state_dict keys."""
    # fmt: off
    layers: list[nn.Module] = [
        _conv(3, 64), nn.ReLU(inplace=True),  # 0, 1     relu1_1
        _conv(64, 64), nn.ReLU(inplace=True),  # 2, 3    relu1_2
        nn.MaxPool2d(2, 2),  # 4                          1/2
        _conv(64, 128), nn.ReLU(inplace=True),  # 5, 6   relu2_1
        _conv(128, 128), nn.ReLU(inplace=True),  # 7, 8  relu2_2
        nn.MaxPool2d(2, 2),  # 9                          1/4
        _conv(128, 256), nn.ReLU(inplace=True),  # 10, 11 relu3_1
        _conv(256, 256), nn.ReLU(inplace=True),  # 12, 13 relu3_2
        _conv(256, 256), nn.ReLU(inplace=True),  # 14, 15 relu3_3
        nn.MaxPool2d(2, 2),  # 16                         1/8
        _conv(256, 512), nn.ReLU(inplace=True),  # 17, 18 relu4_1
        _conv(512, 512), nn.ReLU(inplace=True),  # 19, 20 relu4_2
        _conv(512, 512), nn.ReLU(inplace=True),  # 21, 22 relu4_3
    ]
    # fmt: on
    return nn.Sequential(*layers[: _DEPTH[layer]])


class VGGPerceptual(nn.Module):
    """Frozen VGG16 features: [B, 3, H, W] in [0, 1] → [B, 256, H/4, W/4] (relu3_3) or
    [B, 512, H/8, W/8] (relu4_3).

    `features` has torchvision's layout, so `features.N.weight` keys load as they are.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, layer: PerceptualLayer = "relu3_3") -> None:
        super().__init__()
        if layer not in _DEPTH:
            raise ValueError(f"layer must be one of {sorted(_DEPTH)}, got {layer!r}")
        self.layer = layer
        self.features = _vgg16_features(layer)
        self.register_buffer(
            "mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGPerceptual:
        """Always eval: a loss network must not change behaviour with the trainer's mode."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.features((x - self.mean) / self.std)

    def load_features(self, state_dict: Mapping[str, object]) -> None:
        """Load `features.*` tensors from a torchvision vgg16 (or vgg16.features) state_dict.

        Extra keys (deeper layers, `classifier.*`) are ignored; a missing key or a wrong shape
        raises ValueError listing them.
        """
        expected = self.features.state_dict()
        missing, wrong = [], []
        picked: dict[str, Tensor] = {}
        for key, target in expected.items():
            value = state_dict.get(f"features.{key}")
            if not isinstance(value, Tensor):
                missing.append(f"features.{key}")
            elif value.shape != target.shape:
                wrong.append(f"features.{key} {tuple(value.shape)} != {tuple(target.shape)}")
            else:
                picked[key] = value
        if missing or wrong:
            problems = []
            if missing:
                problems.append("missing " + ", ".join(missing[:4]) + _more(missing))
            if wrong:
                problems.append("wrong shape " + "; ".join(wrong[:4]) + _more(wrong))
            raise ValueError(" and ".join(problems))
        self.features.load_state_dict(picked)


def _more(items: list[str]) -> str:
    return f" (+{len(items) - 4} more)" if len(items) > 4 else ""


def _first_line(exc: Exception) -> str:
    """`Type: first line of the message`, at most 200 characters (torch's can run to pages)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def hub_weights_file() -> Path:
    """Where torch.hub (and torchvision) keep `vgg16-397923af.pth`: `get_dir()/checkpoints`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def fetch_imagenet_vgg16() -> Path:
    """torchvision's VGG16 ImageNet weights in torch.hub's cache, downloaded once if missing.

    The download goes to a temporary file that is renamed when its sha256 matches the name, so
    the cache never holds a partial file. Offline, one ConfigError says which file to put where.
    """
    path = hub_weights_file()
    if path.is_file():
        return path
    log.info("downloading the VGG16 ImageNet weights (528 MB) from %s to %s", VGG16_URL, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            VGG16_URL, str(path), hash_prefix=_VGG16_SHA256_PREFIX, progress=True
        )
        _fsync_file_and_folder(path)
    except Exception as exc:  # offline, proxy, disk full, bad hash: all mean "not there"
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else _first_line(exc)
        raise ConfigError(
            _KEY,
            f"is empty, so PERCEPTUAL_WEIGHT > 0 uses torchvision's VGG16 ImageNet weights "
            f"{VGG16_FILE}, which are not in torch.hub's cache and could not be downloaded "
            f"from {VGG16_URL} ({reason}): place {VGG16_FILE} in {path.parent}, or set "
            f"{_KEY} to a copy of it, or PERCEPTUAL_WEIGHT=0",
        ) from None
    return path


def _fsync_file_and_folder(path: Path) -> None:
    """The renamed download on disk before it is trusted (a crash cannot leave half a file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_perceptual(
    path: str | Path | None = None, layer: PerceptualLayer = "relu3_3"
) -> VGGPerceptual:
    """A frozen `VGGPerceptual` with the weights of a torchvision vgg16 state_dict file: `path`,
    or when it is empty or None, torchvision's ImageNet file from torch.hub's cache.

    Loaded with `weights_only=True` (no code runs from the file), on the CPU; move it after.
    Every problem with the file is a ConfigError on PERCEPTUAL_WEIGHTS_PATH saying what to fix.
    """
    if path is None or str(path) == "":
        path = fetch_imagenet_vgg16()
        remedy = f"delete it to download it again, or set {_KEY} to a good copy"
    else:
        remedy = "point it at a torchvision VGG16 state_dict, or set PERCEPTUAL_WEIGHT=0"
    path = Path(path)
    if not path.is_file():
        raise ConfigError(_KEY, f"no such file: {path} ({remedy})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign file can fail in many ways; all mean "not loadable"
        raise ConfigError(
            _KEY, f"{path} is not a loadable PyTorch state_dict ({_first_line(exc)}; {remedy})"
        ) from None
    if not isinstance(state, Mapping):
        raise ConfigError(
            _KEY, f"{path} holds a {type(state).__name__}, expected a VGG16 state_dict ({remedy})"
        )
    network = VGGPerceptual(layer)
    try:
        network.load_features(state)
    except ValueError as exc:
        raise ConfigError(
            _KEY,
            f"{path} is not a torchvision VGG16 state_dict (features.N.weight keys): {exc} "
            f"({remedy})",
        ) from None
    log.info("perceptual loss: VGG16 %s weights from %s", layer, path)
    return network
