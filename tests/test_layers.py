"""The layer rule of DESIGN §1, read from the source with `ast` (every import counts: those inside
functions and under TYPE_CHECKING too).

    nn ← training ← runtime → files;  terminal, web → runtime;  data → training
    errors, names, metrics, records: importable by every layer, import no layer
    settings (the config schema and loader): importable by every layer but nn, imports only top

A lower layer never imports a higher one, and no two modules import each other, directly or in a
longer cycle. The checker is tested on small invented trees first, so that it is known to fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vsr_async", "web")
TOP_LEVEL = {"vsr_async", "vsr_async.errors", "vsr_async.names", "vsr_async.metrics"}
TOP_LEVEL |= {"vsr_async.records"}
LAYER_PACKAGES = ("settings", "nn", "training", "data", "runtime", "files", "terminal", "tools")

# Each layer and the layers it may import besides itself (everything below it).
BELOW: dict[str, set[str]] = {
    "top": set(),
    "settings": {"top"},
    "nn": {"top"},
    "data": {"settings", "top"},
    "files": {"settings", "top"},
    "training": {"nn", "data", "settings", "top"},
    "runtime": {"training", "nn", "data", "files", "settings", "top"},
    "terminal": {"runtime", "training", "nn", "data", "files", "settings", "top"},
    "web": {"runtime", "training", "nn", "data", "files", "settings", "top"},
    "tools": {"training", "nn", "data", "files", "settings", "top"},
    "cli": {"tools", "terminal", "web", "runtime"}
    | {"training", "nn", "data", "files"}
    | {"settings", "top"},
}
# Outside modules a layer must not import: the compute code knows no asyncio or HTTP, and no
# layer imports the top-level name `config` (the user's run configuration file, not our code).
FORBIDDEN = {layer: {"config"} for layer in BELOW}
FORBIDDEN["nn"] |= {"asyncio", "aiohttp", "aiofiles"}
FORBIDDEN["training"] |= {"asyncio", "aiohttp", "aiofiles"}
FORBIDDEN["tools"] |= {"aiohttp"}


def layer_of(module: str) -> str:
    """The layer a module of vsr_async or web belongs to; a module outside every layer fails."""
    parts = module.split(".")
    if parts[0] == "web":
        return "web"
    if module == "vsr_async.__main__":
        return "cli"
    if module in TOP_LEVEL:
        return "top"
    if len(parts) >= 2 and parts[1] in LAYER_PACKAGES:
        return parts[1]
    raise AssertionError(
        f"{module} belongs to no layer: put it in one of vsr_async/{{{','.join(LAYER_PACKAGES)}}}/ "
        f"or make it one of the top-level modules {sorted(TOP_LEVEL)}"
    )


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_sources(root: Path) -> dict[str, tuple[str, bool]]:
    """module name -> (source, is_package) for every module of vsr_async/ and web/."""
    sources = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            sources[module_name(path, root)] = (path.read_text(), path.name == "__init__.py")
    return sources


def imports_of(
    module: str, source: str, is_package: bool, known: set[str]
) -> list[tuple[int, str]]:
    """(line, imported module) for every import in `source`; `from p import m` names module p.m
    when that is a module, else p. Relative imports are resolved against `module`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.append((node.lineno, target if target in known else base))
    return found


def check_layers(sources: dict[str, tuple[str, bool]]) -> tuple[list[str], dict[str, set[str]]]:
    """Every upward or forbidden import as a message, and the import graph between modules."""
    known = set(sources)
    problems, graph = [], {}
    for module, (source, is_package) in sorted(sources.items()):
        layer = layer_of(module)
        graph[module] = set()
        for line, target in imports_of(module, source, is_package, known):
            where = f"{module} (line {line}) imports {target}"
            if target.split(".")[0] in FORBIDDEN.get(layer, ()):
                problems.append(f"{where}: the {layer} layer must not import {target}")
            if target.split(".")[0] not in PACKAGES:
                continue
            if target not in known:
                problems.append(f"{where}: no such module")
                continue
            graph[module].add(target)
            target_layer = layer_of(target)
            if target_layer != layer and target_layer not in BELOW[layer]:
                problems.append(
                    f"{where}: {layer} may import only {sorted(BELOW[layer] | {layer})}, "
                    f"not {target_layer}"
                )
    return problems, graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) from every strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the number of modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A path a -> ... -> a inside one strongly connected group (breadth-first: a short one)."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph.get(node, set()) & group):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


# --- the checker fails where it must ------------------------------------------------------------


def invented(**modules: str) -> dict[str, tuple[str, bool]]:
    return {name.replace("__", "."): (source, False) for name, source in modules.items()}


def test_checker_names_an_upward_import_even_inside_a_function() -> None:
    sources = invented(
        vsr_async__nn__model="def f():\n    from vsr_async.training.engine import TrainingEngine\n",
        vsr_async__training__engine="from vsr_async.nn.model import VSRNet\n",
    )
    problems, _ = check_layers(sources)
    assert problems == [
        "vsr_async.nn.model (line 2) imports vsr_async.training.engine: nn may import only "
        "['nn', 'top'], not training"
    ]


def test_checker_names_files_importing_runtime_and_type_checking_imports() -> None:
    sources = invented(
        vsr_async__files__checkpoints=(
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from vsr_async.runtime.store import StatsStore\n"
        ),
        vsr_async__runtime__store="from vsr_async.names import display_name\n",
        vsr_async__names="",
    )
    problems, _ = check_layers(sources)
    assert len(problems) == 1 and "vsr_async.files.checkpoints (line 3)" in problems[0]
    assert problems[0].endswith("not runtime")


def test_checker_refuses_config_and_asyncio_in_pure_model_code() -> None:
    sources = invented(vsr_async__nn__model="import asyncio\nfrom config import C\n")
    problems, _ = check_layers(sources)
    assert [p.split(": ")[-1] for p in problems] == [
        "the nn layer must not import asyncio",
        "the nn layer must not import config",
    ]


def test_checker_refuses_settings_in_pure_model_code_and_config_everywhere() -> None:
    sources = invented(
        vsr_async__nn__model="from vsr_async.settings.schema import Config\n",
        vsr_async__settings__schema="",
        vsr_async__runtime__store="import config\n",
    )
    problems, _ = check_layers(sources)
    assert [p.split(": ", 1)[-1] for p in problems] == [
        "nn may import only ['nn', 'top'], not settings",
        "the runtime layer must not import config",
    ]


def test_checker_refuses_a_module_outside_the_layers() -> None:
    with pytest.raises(AssertionError, match=r"vsr_async\.helpers belongs to no layer"):
        check_layers(invented(vsr_async__helpers=""))


def test_checker_reports_a_cycle_within_one_layer() -> None:
    sources = invented(
        vsr_async__terminal__dashboard="from vsr_async.terminal.frame import DashboardFrame\n",
        vsr_async__terminal__frame="from vsr_async.terminal import keyboard\n",
        vsr_async__terminal__keyboard="import vsr_async.terminal.dashboard\n",
    )
    problems, graph = check_layers(sources)
    assert problems == []
    assert import_cycles(graph) == [
        [
            "vsr_async.terminal.dashboard",
            "vsr_async.terminal.frame",
            "vsr_async.terminal.keyboard",
            "vsr_async.terminal.dashboard",
        ]
    ]


# --- the real tree ------------------------------------------------------------------------------


def test_every_module_has_a_layer_and_imports_only_downwards() -> None:
    problems, _ = check_layers(read_sources(ROOT))
    assert not problems, "layer rule broken (DESIGN §1):\n" + "\n".join(problems)


def test_no_import_cycles_between_modules() -> None:
    _, graph = check_layers(read_sources(ROOT))
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
