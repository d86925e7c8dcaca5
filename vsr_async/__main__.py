"""Command line: `python -m vsr_async` (demo), `train`, `check` (both read `--config FILE`, or
`./config.py`), `config` (list the keys, or write a config file), `--version`.

A `VsrError` (bad config, bad data, busy port) is one line on stderr and exit code 1; anything
else is a bug and keeps its traceback. This module is the composition root: the one place that
knows both the runtime (`vsr_async`) and the web panel (`web`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import vsr_async
from vsr_async.errors import OptionError, VsrError, one_line
from vsr_async.names import display_name
from vsr_async.settings import (
    USER_CONFIG,
    Config,
    build_config,
    load_config_file,
    no_effect_lines,
    parse_overrides,
    user_config_file,
)
from vsr_async.terminal.progress import ProgressBar
from vsr_async.tools import TOOLS

if TYPE_CHECKING:
    from vsr_async.training.distributed import RankContext

log = logging.getLogger("vsr_async.cli")

DEMO_DIR = Path("vsr_demo")
CONFIGURED_PORT = object()  # `--tensorboard` without a PORT (argparse converts string consts)

CONFIG_HELP = (
    f"a .toml or .py config file (default: ./{USER_CONFIG} in the working folder, as the "
    "predecessor read it); a .py file is executed as Python (like the predecessor's configs), "
    "so use TOML for configs you did not write yourself"
)

# The embedded demo: a small model that beats bicubic on a 2-core CPU within minutes.
DEMO_SETTINGS: dict[str, Any] = {
    "DATASET_ROOT": str(DEMO_DIR / "dataset"),
    "DATA_ROOT": str(DEMO_DIR / "Learn"),
    "DATASET_LAYOUT": "patches",
    "N_FEATS": 32,
    "N_BLOCKS": 4,
    "NUM_FRAMES": 5,
    "SCALE": 3,
    "BATCH_SIZE": 8,
    "ACCUMULATION_STEPS": 1,
    "LR_EXPONENT": -4.0,
    "WARMUP_STEPS": 50,
    "MAX_LR": 1e-3,
    "MIN_LR": 1e-5,
    "MAX_STEPS": 3000,
    "VAL_STEP_EVERY": 100,
    "SAVE_STEP_EVERY": 500,
    "LOG_TBOARD_EVERY": 10,
    "HIST_STEP_EVERY": 500,
    "NUM_WORKERS": 1,
    "L1_WEIGHT": 1.0,
    "MS_WEIGHT": 0.2,
    "GRAD_WEIGHT": 0.2,
}


def demo_config(overrides: dict[str, Any]) -> Config:
    return build_config({**DEMO_SETTINGS, **overrides})


def package_version() -> str:
    """The installed distribution's version; the source tree's when it is not installed."""
    try:
        return importlib.metadata.version("vsr_async")
    except importlib.metadata.PackageNotFoundError:
        return vsr_async.__version__


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m vsr_async",
        description="Train video super-resolution models under an asyncio supervisor.",
    )
    parser.add_argument("--version", action="version", version=f"vsr_async {package_version()}")
    sub = parser.add_subparsers(dest="command")

    def run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key (repeatable)",
        )
        p.add_argument(
            "--resume",
            default="auto",
            metavar="auto|never|PATH",
            help="continue from the newest checkpoint (auto), start fresh (never), "
            "or from a checkpoint file",
        )
        p.add_argument("--host", help="web panel address (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="web panel port (default 5050; 0 = any free)")
        p.add_argument("--no-web", action="store_true", help="run without the web panel")
        p.add_argument("--no-keyboard", action="store_true", help="do not read keys from stdin")
        p.add_argument(
            "--tensorboard",
            nargs="?",
            const=CONFIGURED_PORT,  # --tensorboard without PORT: TENSORBOARD_PORT
            type=int,
            metavar="PORT",
            help="serve TensorBoard from the run, beside the panel "
            "(port: TENSORBOARD_PORT, 6006 by default; 0 = any free)",
        )

    demo = sub.add_parser("demo", help="train on the embedded demo data (the default)")
    run_options(demo)
    train = sub.add_parser("train", help=f"train with a config file (default ./{USER_CONFIG})")
    train.add_argument("--config", type=Path, help=CONFIG_HELP)
    run_options(train)
    check = sub.add_parser("check", help="validate a config and its dataset, print a summary")
    check.add_argument("--config", type=Path, help=CONFIG_HELP)
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    keys = sub.add_parser("config", help="list every config key: default, range, live, doc")
    keys.add_argument(
        "--write",
        type=Path,
        metavar="FILE",
        help="instead, write a config file with every key at its default (never overwrites)",
    )

    for tool in tool_modules():
        tool.add_parser(sub)

    argv = list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "demo")
    return parser.parse_args(argv)


def tool_modules() -> list[Any]:
    """The tools' modules (`vsr_async.tools.TOOLS`), imported when the CLI parses arguments."""
    return [importlib.import_module(f"vsr_async.tools.{name}") for name in TOOLS]


def check_path_options(args: argparse.Namespace) -> None:
    """Paths given as options, checked before any file call sees them (a NUL byte makes every
    OS call raise ValueError); config keys are checked by `Config` itself."""
    paths = {
        "--config": getattr(args, "config", None),
        "--resume": getattr(args, "resume", None),
        "--write": getattr(args, "write", None),
    }
    for option, value in paths.items():
        if value is not None and "\x00" in str(value):
            raise OptionError(option, f"path contains a NUL byte: {str(value)!r}")


def config_file_of(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The config file `train` or `check` reads, and a line that says which: `--config FILE`,
    else `./config.py` in the working folder (as the predecessor did), else an error."""
    if args.command == "demo":
        return None, ""
    if args.config is not None:
        return args.config, f"config file: {display_name(str(args.config))}"
    found = user_config_file()
    here = display_name(os.getcwd())
    if found is None:
        raise OptionError(
            "--config",
            f"no config file given, and no {USER_CONFIG} in {here}: pass --config FILE, or "
            f"write ./{USER_CONFIG} with every key at its default: "
            f"python -m vsr_async config --write {USER_CONFIG}",
        )
    return found, f"config file: ./{USER_CONFIG} in {here} (no --config given)"


def config_from_args(args: argparse.Namespace, path: Path | None) -> tuple[Config, list[str]]:
    """The run's config, and one line per predecessor key in it that has no effect here (said
    once the run's log is open, so they reach training.log too)."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(load_config_file(path))
    values.update(parse_overrides(args.overrides))
    if getattr(args, "host", None) is not None:
        values["WEB_HOST"] = args.host
    if getattr(args, "port", None) is not None:
        values["WEB_PORT"] = args.port
    if getattr(args, "no_web", False):
        values["WEB_ENABLED"] = False
    if getattr(args, "no_keyboard", False):
        values["KEYBOARD_ENABLED"] = False
    tensorboard = getattr(args, "tensorboard", None)
    if tensorboard is not None:
        values["TENSORBOARD_ENABLED"] = True
        if tensorboard is not CONFIGURED_PORT:  # a PORT was given
            values["TENSORBOARD_PORT"] = tensorboard
    notes = no_effect_lines(values)
    if args.command == "demo":
        return demo_config(values), notes
    return build_config(values), notes


def build_demo_data(config: Config) -> None:
    from vsr_async.data.demo import build_demo_dataset

    with ProgressBar("building demo dataset") as bar:
        build_demo_dataset(
            Path(config.DATASET_ROOT),
            scale=config.SCALE,
            num_frames=config.NUM_FRAMES,
            progress=bar.update,
        )


def scan_with_progress(config: Config) -> Any:
    from vsr_async.runtime.launch import scan

    with ProgressBar("checking dataset") as bar:
        return scan(config, progress=bar.update)


def list_keys(write: Path | None) -> int:
    """`config`: every key with its default, range and doc; or write them as a config file."""
    from vsr_async.settings.describe import config_file_text, key_lines

    if write is None:
        print("\n".join(key_lines()))
        return 0
    shown = display_name(str(write))
    try:
        with open(write, "x", encoding="utf-8") as file:
            file.write(config_file_text())
    except FileExistsError:
        raise OptionError("--write", f"{shown} exists (never overwritten)") from None
    except OSError as exc:
        raise OptionError("--write", f"cannot write {shown}: {exc.strerror or exc}") from None
    print(f"wrote {shown}: every config key at its default")
    return 0


def check(config: Config, source: str, notes: Sequence[str] = ()) -> int:
    print(source)
    info = scan_with_progress(config)
    print(f"config: ok ({len(config.to_dict())} keys)")
    for note in notes:
        print(f"note: {note}")
    print(f"dataset: {info.describe()}")
    print(
        f"model: N_FEATS={config.N_FEATS} N_BLOCKS={config.N_BLOCKS} "
        f"NUM_FRAMES={config.NUM_FRAMES} SCALE=x{config.SCALE}"
    )
    if config.BATCH_SIZE == "auto":
        print(f"batch: auto, probed at start for EFFECTIVE_BATCH={config.EFFECTIVE_BATCH}")
    else:
        print(
            f"batch: {config.BATCH_SIZE} x {config.ACCUMULATION_STEPS} accumulation = "
            f"{config.BATCH_SIZE * config.ACCUMULATION_STEPS} samples per step"
        )
    print(f"run directory: {display_name(Path(config.DATA_ROOT).resolve())}")
    return 0


def rank_context() -> RankContext | None:
    """This process's place in a torchrun job (None: a plain process, or a world of one)."""
    if "WORLD_SIZE" not in os.environ:
        return None  # torch is not imported for a plain run's sake
    from vsr_async.training.distributed import RankContext

    return RankContext.from_env()


async def train(
    config: Config,
    args: argparse.Namespace,
    source: str,
    notes: Sequence[str] = (),
    ranks: RankContext | None = None,
) -> int:
    from vsr_async.runtime.launch import build_run

    info = scan_with_progress(config)
    sockets = None
    if config.WEB_ENABLED:  # bound first: a busy port or bad host is an error before any file
        from web.server import bind_panel

        sockets = await bind_panel(config)
    if config.TENSORBOARD_ENABLED:  # a busy port, too, is an error before any file
        from web.tensorboard_service import check_tensorboard_port

        await asyncio.to_thread(check_tensorboard_port, config.WEB_HOST, config.TENSORBOARD_PORT)
    run = build_run(config, info, resume=args.resume, ranks=ranks)
    if source:
        log.info("%s", source)
    for note in notes:
        log.info("%s", note)
    panel = None
    if config.WEB_ENABLED:
        from web.server import WebPanel

        panel = WebPanel(run.supervisor, config, run.logging, sockets=sockets)
        run.supervisor.add_hook(panel)
    if config.TENSORBOARD_ENABLED:
        from web.tensorboard_service import TensorBoardService

        run.supervisor.add_hook(TensorBoardService.for_run(run.store, run.run_dir, run.config))
    from vsr_async.terminal.dashboard import Dashboard
    from vsr_async.terminal.keyboard import KeyboardReader

    dashboard = Dashboard.for_terminal(run.supervisor, run.logging)  # None without a TTY
    keyboard = KeyboardReader(run.supervisor, dashboard)
    if dashboard is not None:
        if panel is not None:
            dashboard.panel_link = panel.browser_link  # the token, if one was generated
        run.supervisor.add_hook(dashboard)
    run.supervisor.add_hook(keyboard)
    run.supervisor.install_signal_handlers()
    try:
        return await run.execute()
    finally:  # the terminal comes back even if the shutdown itself failed
        keyboard.close()
        if dashboard is not None:
            dashboard.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_path_options(args)
        if args.command == "config":
            return list_keys(args.write)
        if args.command in TOOLS:
            return int(importlib.import_module(f"vsr_async.tools.{args.command}").run(args))
        path, source = config_file_of(args)
        config, notes = config_from_args(args, path)
        if args.command == "check":
            return check(config, source, notes)
        ranks = rank_context()
        if ranks is not None and not ranks.leader:  # torchrun: rank 0 supervises
            from vsr_async.runtime.follower import run_follower

            return run_follower(config, ranks)
        if args.command == "demo":
            build_demo_data(config)
        return asyncio.run(train(config, args, source, notes, ranks))
    except VsrError as exc:
        print(f"vsr_async: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vsr_async: interrupted", file=sys.stderr)
        return 130


def unshadow_package_imports() -> None:
    """`python -m vsr_async` puts the working folder first on sys.path, where a user's own
    `config.py` or `web/` folder would be imported in place of ours. Drop that entry, as pip's
    own `__main__` does, unless the working folder is the source tree that holds this package.
    Called before anything beyond the standard library and `vsr_async` itself is imported."""
    if sys.path and sys.path[0] in ("", os.getcwd()):
        source_tree = Path(__file__).resolve().parent.parent
        if Path(sys.path[0] or ".").resolve() != source_tree:
            del sys.path[0]


if __name__ == "__main__":
    unshadow_package_imports()
    sys.exit(main())
