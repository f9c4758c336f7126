"""The package installs as one name: the design card's folders inside it, its data read as package data.

The wheel itself is built and tried from an empty folder by `.ci/wheel-test`; these tests check the same
promises on the source tree and, where a build backend is at hand, on a wheel built here.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The repository's folders that install inside the package, under these names (pyproject's package-dir).
MAPPED_FOLDERS = {"methods": "peft_bench.methods", "benchmarks": "peft_bench.benchmarks"}
PRODUCT_FOLDERS = ["peft_bench", *MAPPED_FOLDERS]


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def package_name(folder: Path) -> str:
    relative = folder.relative_to(REPO)
    top, rest = relative.parts[0], relative.parts[1:]
    return ".".join([MAPPED_FOLDERS.get(top, top), *rest])


def python_files(folders=PRODUCT_FOLDERS, with_tests: bool = True) -> list[Path]:
    roots = [REPO / name for name in folders] + ([REPO / "tests"] if with_tests else [])
    return sorted(path for root in roots for path in root.rglob("*.py") if "__pycache__" not in path.parts)


def test_pyproject_names_every_package_and_maps_the_design_card_folders():
    setuptools = pyproject()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {package_name(init.parent) for name in PRODUCT_FOLDERS for init in (REPO / name).rglob("__init__.py")}
    assert on_disk <= listed, f"packages missing from pyproject.toml: {sorted(on_disk - listed)}"
    assert setuptools["package-dir"] == {package: folder for folder, package in MAPPED_FOLDERS.items()}
    assert not any(name.split(".")[0] in MAPPED_FOLDERS for name in listed), "a top-level methods/benchmarks"


def test_no_code_imports_methods_or_benchmarks_as_top_level_packages():
    # A top-level `methods` is whatever folder of that name comes first on the path: a user's would win.
    offenders = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno} {name}"
                for name in names
                if name.split(".")[0] in MAPPED_FOLDERS
            ]
    assert not offenders, "import peft_bench.methods / peft_bench.benchmarks instead: " + ", ".join(offenders)


# Code that locates its own source folder. Only sweep.code_root may: it tells jobs where the submitting
# peft_bench was imported from (it reads nothing there).
SOURCE_TREE_PATTERN = re.compile(r"__file__\)?(\.resolve\(\))?\.(parents\[|parent\.parent)")
ALLOWED_SOURCE_TREE_USES = {"peft_bench/launch/sweep.py"}


def test_the_product_reads_no_file_relative_to_the_source_tree():
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in python_files(with_tests=False)
        if str(path.relative_to(REPO)) not in ALLOWED_SOURCE_TREE_USES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if SOURCE_TREE_PATTERN.search(line)
    ]
    assert not offenders, "read package data with importlib.resources instead: " + ", ".join(offenders)


def test_every_reference_csv_in_results_links_to_the_packaged_copy():
    """results/ shows the reported figures where readers look; the package carries the one real copy."""
    from peft_bench.reference import reference_names

    packaged = set(reference_names())
    assert {"paper_cross_modality.csv", "paper_k400_comparison.csv", "paper_ssv2_comparison.csv"} <= packaged
    in_results = [p for pattern in ("paper_*.csv", "followups_*.csv") for p in (REPO / "results").glob(pattern)]
    for path in in_results:
        assert path.is_symlink(), f"{path.name}: move it to peft_bench/reference/ and link it from results/"
        assert path.resolve() == (REPO / "peft_bench" / "reference" / path.name).resolve()
    assert {path.name for path in in_results} == packaged


DECOY = 'raise ImportError("a decoy {name} package was imported instead of peft_bench.{name}")\n'


@pytest.mark.slow
def test_a_methods_package_in_the_working_folder_does_not_shadow_the_built_in_methods(tmp_path):
    for name in MAPPED_FOLDERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(DECOY.format(name=name))
    # `python -m` puts the working folder first on the path, as PYTHONPATH=. would.
    result = subprocess.run(
        [sys.executable, "-m", "peft_bench.cli", "methods", "--backbone", "tiny"],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"linear_probe", "st_adapter", "temporal_ft"} <= {line.split()[0] for line in result.stdout.splitlines()[1:]}
    script = "from peft_bench.data.recipes import available_recipes; print(available_recipes())"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "k400" in result.stdout, result.stderr[-3000:]


def _wheel_backend_reason() -> str | None:
    try:
        import build  # noqa: F401
        import setuptools
    except ImportError as error:
        return f"{error.name} is not installed (pip install -e '.[test]')"
    major = int(setuptools.__version__.split(".")[0])
    return None if major >= 77 else f"setuptools {setuptools.__version__} < 77 (pip install -e '.[test]')"


@pytest.mark.skipif(_wheel_backend_reason() is not None, reason=str(_wheel_backend_reason()))
def test_the_wheel_carries_the_data_and_nothing_at_the_top_level(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.egg-info", "build", "dist", "__pycache__", "runs", ".cache", "mlruns", "*.db"
        ),
    )
    # Weights shipped as package data (e.g. tiny's) must travel in the wheel wherever they sit in the package.
    (source / "peft_bench" / "backbones" / "shipped.safetensors").write_bytes(b"\0" * 16)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--skip-dependency-check",
            "--outdir",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"peft_bench"}, sorted(tops)
    for needed in [
        "peft_bench/methods/st_adapter.py",
        "peft_bench/data/recipes/k400.yaml",
        "peft_bench/benchmarks/loader_speed.py",
        "peft_bench/reference/paper_cross_modality.csv",
        "peft_bench/reference/paper_k400_comparison.csv",
        "peft_bench/backbones/shipped.safetensors",
    ]:
        assert needed in names, f"{needed} is not in the wheel"
