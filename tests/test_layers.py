"""The engine's imports go one way: Runtime builds the parts and hands them over; nothing it builds
reaches back for it (no import circle), and bot/ and run.py take the engine from `core` itself."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACE = {"core/__init__.py", "core/runtime.py", "core/session.py"}  # the Runtime, and what hands it out


def imported(path: Path) -> set[str]:
    """The modules (and names) `path` imports, for type checkers too: a circle drawn only for them is
    still a circle in the design."""
    found: set[str] = set()
    package = ".".join(path.relative_to(ROOT).parent.parts)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_nothing_the_runtime_builds_imports_it() -> None:
    reaching_back = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "core").rglob("*.py"))
                     if str(p.relative_to(ROOT)) not in FACE and "core.runtime" in imported(p)]
    assert reaching_back == []


def test_bot_and_run_py_take_the_engine_from_core() -> None:
    for path in [ROOT / "run.py", *sorted((ROOT / "bot").rglob("*.py"))]:
        assert not {m for m in imported(path) if m.startswith(("core.runtime", "core.tool_loop", "core.session"))}, \
            path
