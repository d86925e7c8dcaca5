"""`python -m vsr_async evaluate --checkpoint CKPT --dataset DIR [--json OUT] [--crop-border N]`:
score a checkpoint on a validation or test set the way papers report it.

Per image and per clip: PSNR and SSIM in RGB and on the BT.601 Y channel (MATLAB's
`rgb2ycbcr`), with N pixels cropped at every border (default: the scale), for the model and for
the bicubic baseline; both outputs are rounded to 8 bits first, as saved frames are. Means over
clips (each clip weighs the same, as Vid4/REDS4 tables average them) and over all images. A
table on stdout, a progress bar on stderr, and the JSON file written atomically at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsr_async.errors import ConfigError, OptionError
from vsr_async.names import display_name
from vsr_async.tools.output_paths import require_output_file

if TYPE_CHECKING:  # torch and PIL load only when the command runs, not when the CLI parses
    from vsr_async.tools.eval_set import EvalSet
    from vsr_async.tools.scoring import LoadedModel, Scores

log = logging.getLogger(__name__)

Y_CHANNEL = "ITU-R BT.601 luma as MATLAB's rgb2ycbcr: Y = 16 + 65.481 R + 128.553 G + 24.966 B"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a checkpoint like the papers do: PSNR/SSIM in RGB and on Y, per image and "
        "per clip, against bicubic",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT", help="a .pt file")
    p.add_argument(
        "--dataset",
        type=Path,
        required=True,
        metavar="DIR",
        help="a dataset root (its Val/ is scored) or a folder with GT/ (and LR/), either layout",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="also write every number here")
    p.add_argument(
        "--crop-border",
        type=int,
        metavar="N",
        help="pixels cut off every border before scoring (default: the model's scale)",
    )
    p.add_argument(
        "--weights",
        choices=("auto", "ema", "live"),
        default="auto",
        help="EMA weights when the checkpoint has them (auto, as validation does), or not",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")


def run(args: argparse.Namespace) -> int:
    if args.json is not None:
        require_output_file("--json", args.json)
    if args.crop_border is not None and args.crop_border < 0:
        raise OptionError("--crop-border", f"must be >= 0, got {args.crop_border}")
    device = _device(args.device)
    from vsr_async.tools.eval_set import find_eval_set
    from vsr_async.tools.scoring import model_from_checkpoint

    eval_set = find_eval_set(args.dataset)
    loaded = model_from_checkpoint(args.checkpoint, device, args.weights)
    border = loaded.scale if args.crop_border is None else args.crop_border
    report = evaluate(eval_set, loaded, device, border)
    report["checkpoint"] = display_name(args.checkpoint)
    print("\n".join(table_lines(report)))
    if args.json is not None:
        from vsr_async.files.atomic import write_atomic

        text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        write_atomic(args.json, text.encode("utf-8"))
        print(f"wrote {display_name(args.json)}")
    return 0


def _device(name: str) -> Any:
    from vsr_async.training.precision import resolve_device

    try:
        return resolve_device(name)
    except ConfigError as exc:
        raise OptionError("--device", str(exc).removeprefix("config key DEVICE: ")) from None
    except RuntimeError as exc:  # torch.device("nonsense")
        raise OptionError("--device", str(exc).splitlines()[0]) from None


def evaluate(eval_set: EvalSet, loaded: LoadedModel, device: Any, border: int) -> dict[str, Any]:
    """Every score of every image, clip means and overall means, as JSON-ready data."""
    from vsr_async.nn.tiling import TiledInference
    from vsr_async.tools.eval_set import clip_images
    from vsr_async.tools.progress_bar import ToolProgress
    from vsr_async.tools.scoring import check_crop, score_window

    tiling = TiledInference()
    clips = []
    with ToolProgress("evaluating", eval_set.image_count, "frames") as bar:
        for clip in eval_set.clips:
            images = []
            for name, lr, gt in clip_images(clip, loaded.num_frames, loaded.scale):
                check_crop(border, name, gt.shape[0], gt.shape[1])
                model, bicubic = score_window(
                    loaded.model,
                    lr,
                    gt,
                    scale=loaded.scale,
                    border=border,
                    device=device,
                    tiling=tiling,
                    name=name,
                )
                images.append({"name": display_name(name), "model": model, "bicubic": bicubic})
                bar.advance()
            clips.append(_summary(display_name(clip.name), images) | {"images": images})
    per_clip = [(c["model"], c["bicubic"]) for c in clips]
    per_image = [(i["model"], i["bicubic"]) for c in clips for i in c["images"]]
    return {
        "dataset": display_name(eval_set.folder),
        "layout": eval_set.layout,
        "step": loaded.step,
        "weights": loaded.weights,
        "model_shape": loaded.shape,
        "scale": loaded.scale,
        "num_frames": loaded.num_frames,
        "crop_border": border,
        "y_channel": Y_CHANNEL,
        "outputs_rounded_to_8_bits": True,
        "clips_count": len(clips),
        "images_count": len(per_image),
        "mean_over_clips": _means(per_clip),
        "mean_over_images": _means(per_image),
        "clips": clips,
    }


def _summary(name: str, images: list[dict[str, Any]]) -> dict[str, Any]:
    means = _means([(i["model"], i["bicubic"]) for i in images])
    return {"name": name, "images_count": len(images), **means}


def _means(pairs: list[tuple[Scores, Scores]]) -> dict[str, Any]:
    from vsr_async.tools.scoring import gain, mean_scores

    model = mean_scores([m for m, _ in pairs])
    bicubic = mean_scores([b for _, b in pairs])
    return {"model": model, "bicubic": bicubic, "gain": gain(model, bicubic)}


def table_lines(report: dict[str, Any]) -> list[str]:
    """One row per clip and the two means: PSNR/SSIM on Y (what papers quote) and RGB, each as
    bicubic → model."""
    header = (
        f"{'clip':<24} {'images':>6}  {'PSNR-Y bicubic → model':>24}  "
        f"{'SSIM-Y bicubic → model':>23}  {'PSNR-RGB':>17}  {'SSIM-RGB':>15}"
    )
    lines = [
        f"checkpoint {report['checkpoint']} (step {report['step']}, {report['weights']} weights, "
        f"x{report['scale']}, {report['num_frames']} frames) on {report['dataset']} "
        f"({report['layout']} layout), {report['crop_border']} px border cropped",
        header,
        "-" * len(header),
    ]
    for clip in report["clips"]:
        lines.append(_row(clip["name"], clip["images_count"], clip))
    lines.append("-" * len(header))
    lines.append(_row("mean over clips", report["clips_count"], report["mean_over_clips"]))
    lines.append(_row("mean over images", report["images_count"], report["mean_over_images"]))
    return lines


def _row(name: str, count: int, entry: dict[str, Any]) -> str:
    m, b = entry["model"], entry["bicubic"]

    def pair(key: str, digits: int) -> str:
        def f(v: float | None) -> str:
            return "inf" if v is None else f"{v:.{digits}f}"

        return f"{f(b[key])} → {f(m[key])}"

    shown = name if len(name) <= 24 else "…" + name[-23:]
    return (
        f"{shown:<24} {count:>6}  {pair('psnr_y_db', 2) + ' dB':>24}  "
        f"{pair('ssim_y', 4):>23}  {pair('psnr_rgb_db', 2):>17}  {pair('ssim_rgb', 4):>15}"
    )
