"""The house's floors hold: no import circles, no module importing from a floor above its own, imports at the top.

The floors and the no-circle rule are import-linter contracts in pyproject.toml (``[tool.importlinter]``); this
test runs them, so a change that breaks one fails the suite. docs/architecture.md draws the same floors.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = ("peft_bench", "methods", "benchmarks")
# cli.py loads each subcommand's modules inside the subcommand, so that a command loads what it uses and no more
# (`peft-bench table` needs neither the runner nor fvcore). Everywhere else an import sits at the top.
LAZY_SUBCOMMANDS = Path("peft_bench/cli.py")


def test_the_import_contracts_hold():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint_imports is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]' installs it)")
    result = subprocess.run(
        [lint_imports, str(ROOT / "pyproject.toml")], cwd=ROOT, check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of each import inside a function body whose line carries no reason: a comment on the import
    line itself or on the line just above it."""
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                here, above = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
                if "#" not in here and not above.strip().startswith("#"):
                    module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    found.append((node.lineno, module or "." * node.level))
    return found


def test_imports_inside_functions_say_why():
    """Only optional or heavy dependencies are imported inside a function, and each such import says why."""
    unexplained = []
    for folder in SOURCE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT)
            for line, module in function_level_imports(path):
                if relative == LAZY_SUBCOMMANDS and module.startswith("peft_bench"):
                    continue
                unexplained.append(f"{relative}:{line} imports {module}")
    assert not unexplained, "imports inside functions without a reason:\n" + "\n".join(unexplained)


def test_the_check_finds_an_unexplained_function_level_import(tmp_path):
    module = tmp_path / "example.py"
    module.write_text(
        "import os\n\n\ndef f():\n    import json\n    # fvcore is heavy\n    import fvcore\n"
        "    import yaml  # optional\n    return json, fvcore, yaml, os\n"
    )
    assert function_level_imports(module) == [(5, "json")]
