"""`export`: the trained model alone, to share or deploy.

    python -m vsr_async export --checkpoint CKPT -o model.safetensors
    python -m vsr_async export --checkpoint CKPT -o model.onnx --format onnx --frame-size 320x180

safetensors: the (EMA) weights only, the model's shape in the metadata; `upscale --checkpoint`
reads it back. ONNX: a graph for one window length (the model's NUM_FRAMES) and one LR frame
size, input `lr` [B, T, 3, h, w] in [0, 1], output `sr` [B, 3, s·h, s·w]. Both written
atomically. Top-level imports stay light: every CLI start imports this module.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from vsr_async.errors import OptionError, OutputError
from vsr_async.names import display_name

FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx"}
ONNX_OPSET = 17


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint's (EMA) weights as safetensors, or the model as ONNX",
        description="Write the model of a checkpoint (its EMA weights when it has them) as a "
        "weights-only safetensors file with the model's shape in its metadata, or as an ONNX "
        "graph for a fixed window and LR frame size.",
    )
    p.add_argument(
        "--checkpoint", type=Path, required=True, metavar="CKPT", help="a checkpoint (.pt)"
    )
    p.add_argument(
        "-o", "--output", type=Path, required=True, metavar="OUT", help="the file to write"
    )
    p.add_argument(
        "--format",
        choices=tuple(FORMATS),
        help="safetensors (default) or onnx; default: by OUT's suffix",
    )
    p.add_argument(
        "--frame-size",
        metavar="WxH",
        help="ONNX only: the LR frame size the graph takes, e.g. 320x180 (required)",
    )
    p.add_argument("--batch", type=int, default=1, help="ONNX only: windows per call (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    fmt = args.format or ("onnx" if output.suffix.lower() == ".onnx" else "safetensors")
    check_options(args, output, fmt)
    from vsr_async.tools.load_model import load_model

    loaded = load_model(args.checkpoint)
    if fmt == "safetensors":
        write_safetensors(loaded, output)
        detail = ""
    else:
        width, height = parse_frame_size(args.frame_size)
        write_onnx(loaded, output, batch=args.batch, width=width, height=height)
        detail = (
            f", input lr [{args.batch}, {loaded.num_frames}, 3, {height}, {width}] -> sr "
            f"[{args.batch}, 3, {height * loaded.scale}, {width * loaded.scale}]"
        )
    print(f"wrote {display_name(str(output))}: {loaded.describe()}{detail}")
    return 0


def check_options(args: argparse.Namespace, output: Path, fmt: str) -> None:
    for option, value in (("-o", output), ("--checkpoint", args.checkpoint)):
        if "\x00" in str(value):
            raise OptionError(option, f"path contains a NUL byte: {str(value)!r}")
    if output.suffix.lower() != FORMATS[fmt]:
        raise OutputError(output, f"a {fmt} file must end in {FORMATS[fmt]}")
    if fmt == "onnx":
        parse_frame_size(args.frame_size)
        if args.batch < 1:
            raise OptionError("--batch", f"must be at least 1, got {args.batch}")
    elif args.frame_size is not None:
        raise OptionError("--frame-size", "only ONNX graphs have a fixed frame size")
    if not output.parent.is_dir():
        raise OutputError(output, f"the folder {display_name(str(output.parent))} does not exist")
    if output.exists() and not args.overwrite:
        raise OutputError(output, "exists (pass --overwrite to replace it)")


def parse_frame_size(text: str | None) -> tuple[int, int]:
    """'320x180' -> (320, 180)."""
    if text is None:
        raise OptionError("--frame-size", "an ONNX graph needs the LR frame size, e.g. 320x180")
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise OptionError("--frame-size", f"expected WxH such as 320x180, got {text!r}")
    return int(match[1]), int(match[2])


def write_safetensors(loaded: Any, output: Path) -> None:
    from vsr_async.tools.weights_file import weights_metadata, write_weights

    metadata = weights_metadata(loaded.shape, loaded.weights, loaded.step, loaded.source.name)
    try:
        write_weights(output, loaded.model.state_dict(), metadata)
    except OSError as exc:
        raise OutputError(output, f"cannot be written: {exc.strerror or exc}") from None


def write_onnx(loaded: Any, output: Path, *, batch: int, width: int, height: int) -> None:
    """Trace the model at one input shape (fp32, CPU) and write the graph with the model's shape
    and the input size in its metadata."""
    import io
    import warnings

    import torch

    from vsr_async.files.atomic import write_atomic
    from vsr_async.tools.extras import require
    from vsr_async.tools.weights_file import weights_metadata

    onnx = require("onnx", "export --format onnx")
    example = torch.rand(batch, loaded.num_frames, 3, height, width)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter (no onnxscript needed) warns that it is the legacy path, and
        # the tracer that shapes become constants: exactly what a fixed-size graph wants.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            loaded.model.float().cpu().eval(),
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter takes a file object
            dynamo=False,
            input_names=["lr"],
            output_names=["sr"],
            opset_version=ONNX_OPSET,
        )
    graph = onnx.load_from_string(buffer.getvalue())
    metadata = weights_metadata(loaded.shape, loaded.weights, loaded.step, loaded.source.name)
    metadata.update(input_shape=f"{batch}x{loaded.num_frames}x3x{height}x{width}")
    onnx.helper.set_model_props(graph, metadata)
    onnx.checker.check_model(graph)
    try:
        write_atomic(output, graph.SerializeToString())
    except OSError as exc:
        raise OutputError(output, f"cannot be written: {exc.strerror or exc}") from None
