"""The structure the layers promise: no import cycle, every built-in capability an extension."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

from medserve.core.extensions import Extension, extensions
from medserve.core.runtimes.loader import CORE_FLAVORS, flavors
from medserve.serving.extension import ServingExtension


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    imported = sorted(graph.find_modules_directly_imported_by(child))
                    work.append((child, iter(imported)))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_cycle() -> None:
    # Imports under TYPE_CHECKING only name types for annotations and never run: excluded.
    graph = grimp.build_graph("medserve", exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b"]]


def test_every_builtin_capability_is_an_extension_found_by_entry_point() -> None:
    found = {e.name: e for e in extensions()}
    assert set(found) >= {
        "security",
        "governance",
        "monitoring",
        "interop",
        "modalities",
        "composition",
        "explain",
    }
    assert all(isinstance(e, Extension) for e in found.values())
    served = [e.name for e in extensions() if isinstance(e, ServingExtension)]
    assert served[0] == "security"  # its lifespan (guard, audit) is entered before the rest


def test_runtime_flavors_beyond_the_core_come_from_extensions() -> None:
    extra = set(flavors()) - set(CORE_FLAVORS)
    assert extra == {"image", "text", "sequence", "ensemble", "gguf", "minilm-onnx",
                     "gguf-embedding", "openai-upstream"}  # fmt: skip


HEAVY = {
    "pandas",
    "sklearn",
    "scipy",
    "skops",
    "skl2onnx",
    "onnx",
    "matplotlib",
    "lifelines",
    "shap",
    "xgboost",
    "lightgbm",
    "pydicom",
    "PIL",
    "tokenizers",
    "torch",
    "llama_cpp",  # a generative model loads llama.cpp when its version loads, not before
    "gguf",
}


def test_a_serving_worker_imports_no_heavy_library(tmp_path: Path) -> None:
    """A worker that starts (app, extensions, lifespan) keeps pandas, scikit-learn, scipy and the
    optional extras out of its memory (≤ 200 MB a worker); a fresh interpreter shows it."""
    script = f"""
import asyncio, sys
from asgi_lifespan import LifespanManager
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.faces.app import create_app
Registry.open(Settings(home={str(tmp_path)!r})).close()
async def main():
    async with LifespanManager(create_app(Settings(home={str(tmp_path)!r}, security=True))):
        pass
asyncio.run(main())
print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
