"""The web UI is plain ES modules served from api/static/ with no build step: every module the page imports, from
index.html's script on, must be a file there that the wheel ships (pyproject's package-data for `api`), and no
module may be left there that the page never imports."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "api"
STATIC = API / "static"
IMPORT = re.compile(r"""^import\s+(?:[^;"']*?\sfrom\s+)?["']([^"']+)["']""", re.MULTILINE)  # a module's top level


def _imports(module: Path) -> list[Path]:
    targets = []
    for spec in IMPORT.findall(module.read_text()):
        assert spec.startswith(("./", "../", "/")), f"{module.name}: {spec!r} is not a file the page can load"
        target = STATIC / spec.lstrip("/") if spec.startswith("/") else module.parent / spec
        targets.append(target.resolve())
    return targets


def _page_modules() -> set[Path]:
    entries = re.findall(r'<script type="module" src="/([^"]+)"', (STATIC / "index.html").read_text())
    assert entries == ["app.js"], entries
    seen: set[Path] = set()
    todo = [(STATIC / entry).resolve() for entry in entries]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        assert module.is_file(), f"{module.relative_to(ROOT)} is imported but missing"
        seen.add(module)
        todo.extend(_imports(module))
    return seen


def test_every_module_the_page_imports_is_shipped_and_none_is_left_over() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["api"]
    shipped = {path.resolve() for pattern in patterns for path in API.glob(pattern) if path.is_file()}
    modules = _page_modules()
    assert len(modules) > 5, modules
    assert modules <= shipped, sorted(str(m.relative_to(ROOT)) for m in modules - shipped)
    left_over = {path.resolve() for path in STATIC.rglob("*.js")} - modules
    assert not left_over, sorted(str(m.relative_to(ROOT)) for m in left_over)
