"""The predecessor's (VSR++) config files start here unchanged, paths aside (issue 12, done-when 2).

Every key of its shipped config files (tests/fixtures/predecessor: their KEY = value lines, as
shipped) and of its code's config reads is applied — as ours, or mapped to ours — or named in
exactly one log line saying why it has no effect here; a key unknown to both stays an error. The
perceptual loss without PERCEPTUAL_WEIGHTS_PATH uses torchvision's VGG16 ImageNet file from
torch.hub's cache (offline: one line naming the file and the folder). The predecessor's
lowercase runtime_config.json is mapped or set aside, never an error, never written to.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
import torch
from helpers import _clip, finish_run, run_cli

from vsr_async.__main__ import main
from vsr_async.data.images import write_png
from vsr_async.errors import ConfigError
from vsr_async.files.checkpoints import CHECKPOINT_DIR, list_checkpoints, load_checkpoint
from vsr_async.files.tensorboard import TensorBoardLogger
from vsr_async.nn import perceptual
from vsr_async.nn.perceptual import VGG16_FILE, load_perceptual
from vsr_async.runtime.live_config import (
    OWN_RUNTIME_CONFIG,
    RUNTIME_CONFIG,
    LiveConfigRecorder,
    check_live_changes,
)
from vsr_async.settings import (
    PREDECESSOR_KEYS,
    Config,
    Mapped,
    NoEffect,
    build_config,
    field_names,
    live_keys,
    load_config_file,
    no_effect_lines,
)

FIXTURES = Path(__file__).parent / "fixtures" / "predecessor"
SHIPPED = ["config.py.example", "config.py.active", "config_p4_optimized.py", "config.py"]

# What the test changes: the paths, and the sizes that make a CPU run of a few steps quick.
SPEED = {
    "N_FEATS": 8,
    "N_BLOCKS": 2,
    "BATCH_SIZE": 2,
    "ACCUMULATION_STEPS": 1,
    "MAX_STEPS": 3,
    "NUM_WORKERS": 0,
}

# torchvision's vgg16 "D" configuration: conv widths, "M" = max-pool.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_features_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """`features.*` of `torchvision.models.vgg16().state_dict()`: its names and shapes, written
    out from the published layout (random values), so our index mapping is checked against it."""
    g = torch.Generator().manual_seed(seed)
    state, index, c_in = {}, 0, 3
    for item in VGG16_CFG:
        if item == "M":
            index += 1
            continue
        assert isinstance(item, int)
        state[f"features.{index}.weight"] = torch.randn(item, c_in, 3, 3, generator=g) * 0.05
        state[f"features.{index}.bias"] = torch.randn(item, generator=g) * 0.01
        index, c_in = index + 2, item
    return state


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME whose hub cache holds vgg16-397923af.pth (random values, the right shapes)."""
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(vgg16_features_state(), home / "hub" / "checkpoints" / VGG16_FILE)
    return home


@pytest.fixture(scope="module")
def vsrpp_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The predecessor's patch layout: 5 LR frames stacked vertically, x3, same file names."""
    root = tmp_path_factory.mktemp("vsrpp_dataset")
    rng = np.random.default_rng(0)
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    for split, count, size in (("Patches", 12, 24), ("Val", 2, 48)):
        for sub in ("GT", "LR"):
            (root / split / sub).mkdir(parents=True)
        for i in range(count):
            photo = photos[i % len(photos)]
            y = int(rng.integers(0, photo.shape[0] - size))
            x = int(rng.integers(5, photo.shape[1] - size - 5))
            gt, lr = _clip(photo, x, y, size, 5, 3)
            write_png(root / split / "GT" / f"{i:05d}.png", gt)
            write_png(root / split / "LR" / f"{i:05d}.png", lr)
    return root


def hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- the table ---------------------------------------------------------------------------------


def test_every_shipped_key_is_ours_or_in_the_table(tmp_path: Path) -> None:
    ours = set(field_names())
    for name in SHIPPED:
        for key in load_shipped(name, tmp_path):
            assert key in ours or key in PREDECESSOR_KEYS, f"{name}: {key} is in neither"


def test_mapped_keys_name_keys_of_ours() -> None:
    ours = set(field_names())
    for key, entry in PREDECESSOR_KEYS.items():
        assert key not in ours, f"{key} is ours: it needs no entry"
        if isinstance(entry, Mapped):
            assert entry.key in ours, f"{key} maps to {entry.key}, which is no key of ours"


@pytest.mark.parametrize("key", [k for k, e in PREDECESSOR_KEYS.items() if isinstance(e, NoEffect)])
def test_a_key_without_effect_is_accepted_and_named_once(key: str) -> None:
    assert build_config({key: 3}) == Config()
    lines = no_effect_lines({key: 3, "N_FEATS": 16, "MAX_LR": 2e-4})
    assert lines == [f"config key {key} (from VSR++) has no effect here: {no_effect_why(key)}"]


def test_renamed_keys_convert_their_values() -> None:
    config = build_config(
        {"USE_GRADIENT_CHECKPOINTING": True, "USE_AMP": "false", "max_lr": "3e-4", "n_feats": 32}
    )
    assert config.GRADIENT_CHECKPOINTING is True and config.AMP == "off"
    assert config.MAX_LR == 3e-4 and config.N_FEATS == 32
    assert build_config({"USE_GRADIENT_CHECKPOINTING": "false"}).GRADIENT_CHECKPOINTING is False


@pytest.mark.parametrize(
    ("values", "key", "fragment"),
    [
        ({"LR_UPDATE_EVRY": 10}, "LR_UPDATE_EVRY", 'did you mean "LR_UPDATE_EVERY"'),
        ({"plateau_patiences": 9}, "plateau_patiences", "unknown key"),
        ({"MAX_LR": 1e-4, "max_lr": 2e-4}, "MAX_LR", "max_lr=0.0002"),
        ({"USE_AMP": 3}, "USE_AMP", "must be true or false"),
    ],
)
def test_unknown_and_conflicting_keys_stay_errors(values: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(values)
    assert info.value.key == key and fragment in str(info.value), str(info.value)


def test_a_live_change_to_a_key_without_effect_is_refused() -> None:
    with pytest.raises(ConfigError, match="DISPLAY_MODE: has no effect here"):
        check_live_changes(Config(), {"DISPLAY_MODE": 2})
    assert check_live_changes(Config(), {"max_lr": 2e-4}).MAX_LR == 2e-4


def no_effect_why(key: str) -> str:
    entry = PREDECESSOR_KEYS[key]
    assert isinstance(entry, NoEffect)
    return entry.why


def load_shipped(name: str, folder: Path) -> dict[str, Any]:
    """A fixture as the user runs it: copied to config.py (VSR++ imported it under that name)."""
    target = folder / "config.py"
    shutil.copyfile(FIXTURES / name, target)
    return load_config_file(target)


# --- done-when 2: each shipped file starts and trains ----------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_file_trains_with_only_paths_and_sizes_changed(
    name: str,
    tmp_path: Path,
    vsrpp_dataset: Path,
    torch_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(torch_home))  # active and p4 turn the VGG loss on
    shipped = load_shipped(name, tmp_path)
    config_file = tmp_path / "config.py"
    learn = tmp_path / "Learn"
    overrides = {"DATASET_ROOT": str(vsrpp_dataset), "DATA_ROOT": str(learn), **SPEED}
    argv = ["train", "--config", str(config_file), "--no-web", "--no-keyboard"]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={value}"]

    assert main(argv) == 0

    steps = [step for step, _ in list_checkpoints(learn / CHECKPOINT_DIR)]
    assert steps and max(steps) == SPEED["MAX_STEPS"]  # it trained to the end
    saved = load_checkpoint(learn / CHECKPOINT_DIR / f"checkpoint_{max(steps)}.pt")["config"]
    log_lines = (learn / "training.log").read_text(encoding="utf-8").splitlines()
    no_effect = [line for line in log_lines if "has no effect here" in line]
    for key, value in shipped.items():
        naming = [line for line in log_lines if f"config key {key} " in line]
        entry = PREDECESSOR_KEYS.get(key)
        if isinstance(entry, NoEffect):
            assert len(naming) == 1 and entry.why in naming[0], (key, naming)
            continue
        ours, expected = (entry.key, entry.convert(value)) if entry else (key, value)
        if key not in overrides:
            assert saved[ours] == expected, f"{name}: {key}={value!r} not applied ({saved[ours]!r})"
        assert not [line for line in no_effect if f"config key {key} " in line], key
    expected_notes = [k for k in shipped if isinstance(PREDECESSOR_KEYS.get(k), NoEffect)]
    assert len(no_effect) == len(expected_notes), no_effect
    vgg = [line for line in log_lines if "perceptual loss: VGG16" in line]
    if shipped.get("PERCEPTUAL_WEIGHT", 0) > 0:  # from the hub cache, nothing downloaded
        assert saved["PERCEPTUAL_WEIGHTS_PATH"] == ""
        assert len(vgg) == 1 and str(torch_home / "hub" / "checkpoints" / VGG16_FILE) in vgg[0]
        assert not [line for line in log_lines if "downloading" in line]
    else:
        assert not vgg  # no VGG built while its weight is 0


def test_check_names_the_keys_without_effect(
    tmp_path: Path, vsrpp_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load_shipped("config.py", tmp_path)
    argv = ["check", "--config", str(tmp_path / "config.py")]
    argv += ["--set", f"DATASET_ROOT={vsrpp_dataset}", "--set", f"DATA_ROOT={tmp_path / 'L'}"]
    assert main(argv) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert [n.split()[3] for n in notes] == ["LR_UPDATE_EVERY", "VAL_BATCH_SIZE"], notes


# --- VGG16 from torch.hub's cache --------------------------------------------------------------


def test_vgg_file_in_the_hub_cache_is_used_without_a_download(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(torch_home))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    network = load_perceptual("")
    state = vgg16_features_state()
    for key, value in network.features.state_dict().items():
        assert torch.equal(value, state[f"features.{key}"]), key
    assert network.layer == "relu3_3" and len(network.features) == 16


def test_damaged_vgg_file_in_the_cache_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / VGG16_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"<html>captive portal</html>")
    with pytest.raises(ConfigError) as info:
        load_perceptual("")
    message = str(info.value)
    assert "\n" not in message and str(cached) in message and "delete it" in message


def test_offline_without_the_vgg_file_is_one_line_naming_file_and_folder(
    tmp_path: Path, vsrpp_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the user meets it: `train` with PERCEPTUAL_WEIGHT > 0, an empty cache, no network (a
    proxy nobody listens on stands for it, also on a machine that is online)."""
    config_file = tmp_path / "config.py"
    shutil.copyfile(FIXTURES / "config.py.active", config_file)
    home = tmp_path / "torch_home"
    args = ["train", "--config", str(config_file), "--no-web", "--no-keyboard"]
    overrides = {"DATASET_ROOT": str(vsrpp_dataset), "DATA_ROOT": str(tmp_path / "L"), **SPEED}
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    monkeypatch.setenv("TORCH_HOME", str(home))  # the child inherits the environment
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    result = run_cli(*args)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vsr_async: error")]
    assert len(errors) == 1, result.stderr
    assert VGG16_FILE in errors[0] and str(home / "hub" / "checkpoints") in errors[0], errors[0]
    assert not list((home / "hub" / "checkpoints").glob("*")), "a partial download was left"


async def test_vgg_loads_on_the_gpu_thread(
    make_config: Any, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    threads: list[str] = []
    fetch = perceptual.fetch_imagenet_vgg16

    def watched() -> Path:
        threads.append(threading.current_thread().name)
        return fetch()

    monkeypatch.setattr(perceptual, "fetch_imagenet_vgg16", watched)
    run = await finish_run(make_config, MAX_STEPS=2, PERCEPTUAL_WEIGHT=0.1)
    assert len(threads) == 1 and threads[0].startswith("gpu"), threads
    assert run.config.PERCEPTUAL_WEIGHT == 0.1


# --- the predecessor's runtime_config.json ----------------------------------------------------

VSRPP_RUNTIME = {
    "max_lr": 0.0005,
    "min_lr": 1e-6,
    "val_step_every": 2,
    "initial_grad_clip": 2.0,
    "plateau_patience": 250,
    "n_feats": 64,
    "bogus_key": 1,
}


async def test_vsrpp_runtime_config_is_mapped_or_set_aside_and_never_written(
    make_config: Any,
) -> None:
    first = await finish_run(make_config, MAX_STEPS=2)
    path = first.run_dir / RUNTIME_CONFIG
    path.write_text(json.dumps(VSRPP_RUNTIME, indent=2))
    before = path.read_bytes()

    again = await finish_run(make_config, MAX_STEPS=4)

    assert again.run_dir == first.run_dir and path.read_bytes() == before
    config = again.config
    assert (config.MAX_LR, config.MIN_LR, config.VAL_STEP_EVERY) == (5e-4, 1e-6, 2)
    assert config.INITIAL_GRAD_CLIP == 2.0 and config.N_FEATS == 8  # n_feats: start-only
    log_text = (again.run_dir / "training.log").read_text(encoding="utf-8")
    for key, why in [
        ("plateau_patience", "no effect here"),
        ("n_feats", "N_FEATS only applies at start"),
        ("bogus_key", "not a key of VSR++ or of vsr_async"),
    ]:
        lines = [line for line in log_text.splitlines() if f" {key}=" in line]
        assert len(lines) == 1 and "set aside" in lines[0] and why in lines[0], (key, lines)
    assert re.search(
        r"runtime_config\.json is VSR\+\+'s: applied MAX_LR=0\.0005 \(from max_lr\)", log_text
    )
    assert (again.run_dir / "Statistik_4.json").is_file()  # val_step_every=2 took effect


@pytest.mark.parametrize("content", [b"{}", b'{"max_lr": 0.00', b"[1, 2]", b"\xff\xfe"])
async def test_odd_vsrpp_runtime_config_never_stops_a_resume(
    make_config: Any, content: bytes
) -> None:
    first = await finish_run(make_config, MAX_STEPS=2)
    path = first.run_dir / RUNTIME_CONFIG
    path.write_bytes(content)
    again = await finish_run(make_config, MAX_STEPS=3)
    assert path.read_bytes() == content and again.config.MAX_LR == first.config.MAX_LR
    log_text = (again.run_dir / "training.log").read_text(encoding="utf-8")
    set_aside = [line for line in log_text.splitlines() if "set aside, not applied" in line]
    assert len(set_aside) == (0 if content == b"{}" else 1), log_text
    if content == b"{}":  # VSR++'s file as it starts: nothing in it to apply
        assert "runtime_config.json is VSR++'s: no value of it applies" in log_text


async def test_live_changes_go_beside_the_vsrpp_file(tmp_path: Path) -> None:
    (tmp_path / RUNTIME_CONFIG).write_text('{"max_lr": 0.0002}')
    before = hashes(tmp_path)
    tensorboard = TensorBoardLogger(tmp_path / "tensorboard")
    try:
        recorder = LiveConfigRecorder(tmp_path, tensorboard)
        config = Config().replace({"MAX_LR": 3e-4})
        await recorder.on_config_change(config, {"MAX_LR": 3e-4}, step=7)
        await recorder.stop()
    finally:
        tensorboard.close()
    assert (tmp_path / RUNTIME_CONFIG).read_bytes() == b'{"max_lr": 0.0002}'
    saved = json.loads((tmp_path / OWN_RUNTIME_CONFIG).read_text())
    assert saved["MAX_LR"] == 3e-4 and set(saved) == live_keys()
    assert {k: v for k, v in hashes(tmp_path).items() if k in before} == before
