"""`python -m vsr_async export`: the EMA weights as safetensors (the model's shape in the metadata,
read back by `upscale`), an ONNX graph that onnxruntime runs to the PyTorch output within 1e-4;
bad inputs are one line, a non-zero exit and no output file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from safetensors import safe_open
from tools_helpers import SHAPE, pan_frames, write_tiny_checkpoint, write_video

from vsr_async.__main__ import main
from vsr_async.data.images import read_rgb


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("export_inputs")
    model, ema = write_tiny_checkpoint(root / "best.pt")
    return {"root": root, "ckpt": root / "best.pt", "model": model, "ema": ema}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsr_async: error: "), err
    return lines[0]


def test_safetensors_holds_the_ema_weights_and_the_shape_and_upscale_reads_it(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "model.safetensors"
    assert main(["export", "--checkpoint", str(trained["ckpt"]), "-o", str(weights)]) == 0
    assert "EMA weights of step 40" in capsys.readouterr().out
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    assert {k: metadata[k] for k in SHAPE} == {k: str(v) for k, v in SHAPE.items()}
    assert metadata["format"] == "vsr_async.weights" and metadata["weights"] == "EMA"
    assert metadata["step"] == "40" and metadata["source"] == "best.pt"
    ema_state = trained["ema"].state_dict()
    assert tensors.keys() == ema_state.keys()
    assert all(torch.equal(tensors[k], ema_state[k]) for k in tensors)
    assert weights.stat().st_size < trained["ckpt"].stat().st_size  # no optimizer, no training

    video = tmp_path / "clip.mkv"
    write_video(video, pan_frames(6, 40, 24))
    for name, ckpt in (("from_pt", trained["ckpt"]), ("from_safetensors", weights)):
        argv = ["upscale", "--checkpoint", str(ckpt), str(video), "-o", str(tmp_path / name)]
        assert main(argv) == 0
    names = sorted(p.name for p in (tmp_path / "from_pt").iterdir())
    assert len(names) == 6
    for name in names:
        assert np.array_equal(
            read_rgb(tmp_path / "from_pt" / name), read_rgb(tmp_path / "from_safetensors" / name)
        )


def test_onnx_graph_matches_pytorch_within_1e_4(trained: dict[str, Any], tmp_path: Path) -> None:
    graph = tmp_path / "model.onnx"
    argv = ["export", "--checkpoint", str(trained["ckpt"]), "-o", str(graph)]
    assert main([*argv, "--format", "onnx", "--frame-size", "40x24", "--batch", "2"]) == 0
    model = onnx.load(str(graph))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["N_FEATS"] == "8" and props["input_shape"] == "2x3x3x24x40"
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    (lr_input,) = session.get_inputs()
    assert lr_input.name == "lr" and lr_input.shape == [2, 3, 3, 24, 40]

    frames = pan_frames(6, 40, 24)
    lr = torch.stack(
        [
            torch.from_numpy(np.stack(frames[i : i + 3])).permute(0, 3, 1, 2).float() / 255
            for i in (0, 3)
        ]
    )  # [2, 3, 3, 24, 40]: two windows of real frames
    (sr,) = session.run(["sr"], {"lr": lr.numpy()})
    with torch.no_grad():
        expected = trained["ema"](lr).numpy()
    assert sr.shape == (2, 3, 48, 80)
    assert np.abs(sr - expected).max() < 1e-4
    with torch.no_grad():
        training = trained["model"](lr).numpy()
    assert np.abs(sr - training).max() > 1e-2  # the EMA weights, not the training ones


def bad_export(name: str, root: Path, trained: dict[str, Any]) -> tuple[list[str], Path, str]:
    ckpt = str(trained["ckpt"])
    out = root / "out" / "model.safetensors"
    if name == "checkpoint of another shape":
        other = root / "other.pt"
        write_tiny_checkpoint(other, weights_shape={**SHAPE, "N_BLOCKS": 4})
        return ["--checkpoint", str(other)], out, "weights do not fit the model shape it declares"
    if name == "text file as checkpoint":
        text = root / "notes.pt"
        text.write_text("not a checkpoint")
        return ["--checkpoint", str(text)], out, f"checkpoint {text}: cannot be loaded"
    if name == "output in a missing folder":
        missing = root / "nowhere" / "model.safetensors"
        return ["--checkpoint", ckpt], missing, "the folder"
    if name == "onnx without a frame size":
        onnx_out = root / "out" / "model.onnx"
        return ["--checkpoint", ckpt], onnx_out, "option --frame-size: an ONNX graph needs"
    if name == "onnx with a bad frame size":
        onnx_out = root / "out" / "model.onnx"
        return ["--checkpoint", ckpt, "--frame-size", "40by24"], onnx_out, "expected WxH"
    if name == "wrong suffix":
        return ["--checkpoint", ckpt, "--format", "onnx"], out, "must end in .onnx"
    raise AssertionError(name)


@pytest.mark.parametrize(
    "name",
    [
        "checkpoint of another shape",
        "text file as checkpoint",
        "output in a missing folder",
        "onnx without a frame size",
        "onnx with a bad frame size",
        "wrong suffix",
    ],
)
def test_bad_exports_are_one_line_and_leave_no_file(
    name: str, trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    args, output, says = bad_export(name, tmp_path, trained)
    assert main(["export", *args, "-o", str(output)]) == 1
    line = one_error_line(capsys)
    assert says in line, line
    assert not output.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_a_foreign_or_damaged_weights_file_is_one_line_in_upscale(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    video = tmp_path / "clip.mkv"
    write_video(video, pan_frames(4, 40, 24))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    good = tmp_path / "good.safetensors"
    assert main(["export", "--checkpoint", str(trained["ckpt"]), "-o", str(good)]) == 0
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    capsys.readouterr()
    for weights, says in (
        (foreign, "is a safetensors file, but not weights exported by vsr_async"),
        (cut, "cannot be loaded: not a safetensors file"),
    ):
        output = tmp_path / f"sr_{weights.stem}"
        argv = ["upscale", "--checkpoint", str(weights), str(video), "-o", str(output)]
        assert main(argv) == 1
        line = one_error_line(capsys)
        assert f"checkpoint {weights}: {says}" in line, line
        assert not output.exists()


@pytest.mark.parametrize(("package", "argv_tail"), [("safetensors", []), ("onnx", ["onnx"])])
def test_a_missing_export_package_names_its_install(
    package: str,
    argv_tail: list[str],
    trained: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # what `import` meets when it is absent
    output = tmp_path / ("model.onnx" if argv_tail else "model.safetensors")
    argv = ["export", "--checkpoint", str(trained["ckpt"]), "-o", str(output)]
    if argv_tail:
        argv += ["--frame-size", "40x24"]
    assert main(argv) == 1
    line = one_error_line(capsys)
    assert f"needs the {package!r} package, which is not installed: pip install '" in line
    assert "[export] extra" in line
    assert not output.exists()


def test_the_extras_the_tools_name_are_the_ones_pyproject_declares() -> None:
    import tomllib

    from vsr_async.tools.extras import EXTRA_OF

    root = Path(__file__).resolve().parent.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def names(extra: str) -> set[str]:
        return {re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0] for spec in extras[extra]}

    for module, extra in EXTRA_OF.items():
        assert module in names(extra), (module, extra)
        assert module in names("test")  # the tests exercise every optional package
    assert "onnxruntime" in names("test")
