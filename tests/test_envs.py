"""Every third-party package a rule's script imports must be listed in that rule's conda env file.

For each rule in workflow/rules/*.smk with a ``conda:`` env file and a ``shell:`` that runs
``python <...>/scripts/<x>.py`` (or ``python -m grpo_vqa...``, or a ``script:`` directive), the
script's imports are collected with ``ast``, following imports of the ``grpo_vqa`` package (under
src/grpo_vqa) and of sibling scripts transitively. Import names are mapped to distributions with
``importlib.metadata.packages_distributions()`` (standard-library modules, per
``sys.stdlib_module_names``, are skipped) and each distribution must appear in the env file's
conda or pip dependencies.

Not counted as needs: imports under ``if TYPE_CHECKING:`` and imports inside a ``try:`` whose
``except`` catches ImportError/ModuleNotFoundError (optional dependencies). Installing the project
itself into an env (``pip: [-e .]``) does not count as listing its dependencies: each env file
must name what its scripts import, so that the env is explicit and pinned.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "grpo_vqa"

# Conda package names whose PyPI distribution name differs.
CONDA_TO_PYPI = {
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "pytorch-gpu": "torch",
    "py-opencv": "opencv-python",
    "tensorflow-gpu": "tensorflow",
}
# Import names of common packages that may not be installed where the tests run.
IMPORT_TO_DIST_FALLBACK = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "cv2": "opencv-python",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "bs4": "beautifulsoup4",
    "dateutil": "python-dateutil",
    "attr": "attrs",
    "google.protobuf": "protobuf",
}


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- rules ---------------------------------------------------------------------------------


@dataclass
class RuleSpec:
    name: str
    smk: Path
    conda: str | None  # as written in the rule
    scripts: list[str] = field(default_factory=list)  # script paths as written
    modules: list[str] = field(default_factory=list)  # `python -m` modules

    @property
    def where(self) -> str:
        return f"rule {self.name} ({self.smk.name})"


_RULE_HEADER = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:", re.M)
_STRING = re.compile(r"""^\s*(?:r|f|rf|fr)?(["'])(?P<s>[^"']*)\1""")
_PY_SCRIPT = re.compile(
    r"""\bpython(?:3(?:\.\d+)?)?\s+(?:-[A-Za-z]\S*\s+)*["']?(?P<path>[^\s"';|&]+\.py)\b"""
)
_PY_MODULE = re.compile(r"\bpython(?:3(?:\.\d+)?)?\s+(?:-[A-Za-z]\S*\s+)*-m\s+(?P<mod>[\w.]+)")


def _rule_blocks(text: str):
    """Yield (name, block text) for each top-level rule/checkpoint of a .smk file."""
    headers = list(_RULE_HEADER.finditer(text))
    for m in headers:
        body_lines = []
        for line in text[m.end() :].splitlines()[1:]:
            if line.strip() and not line[0].isspace() and not line.lstrip().startswith("#"):
                break  # next top-level statement
            body_lines.append(line)
        yield m.group(1), "\n".join(body_lines)


def _directive(block: str, name: str) -> str | None:
    """Text of a rule directive (`name:` up to the next directive at the same indent)."""
    m = re.search(rf"^(?P<indent>[ \t]+){name}\s*:(?P<rest>.*)$", block, re.M)
    if not m:
        return None
    indent = len(m.group("indent"))
    lines = [m.group("rest")]
    for line in block[m.end() :].splitlines()[1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        lines.append(line)
    return "\n".join(lines)


def _first_string(text: str | None) -> str | None:
    if text is None:
        return None
    for line in text.splitlines():
        if line.strip():
            m = _STRING.match(line)
            return m.group("s") if m else line.strip()
    return None


def parse_rules(smk: Path) -> list[RuleSpec]:
    """Rules of one .smk file with their conda env and the Python scripts/modules they run."""
    specs = []
    for name, block in _rule_blocks(smk.read_text(encoding="utf-8")):
        shell = _directive(block, "shell") or ""
        spec = RuleSpec(name=name, smk=smk, conda=_first_string(_directive(block, "conda")))
        spec.scripts = [m.group("path") for m in _PY_SCRIPT.finditer(shell)]
        spec.modules = [m.group("mod") for m in _PY_MODULE.finditer(shell)]
        script_directive = _first_string(_directive(block, "script"))
        if script_directive and script_directive.endswith(".py"):
            spec.scripts.append(script_directive)
        specs.append(spec)
    return specs


def resolve_script(written: str, smk: Path, repo: Path) -> Path | None:
    """Find the file a rule's script path means: as written (relative to the repo root, where
    the workflow runs, or to the .smk file), else by name under scripts/ (for `{SCRIPTS}/x.py`)."""
    if "{" not in written:
        for base in (repo, smk.parent):
            p = (base / written).resolve()
            if p.is_file():
                return p
    p = repo / "scripts" / Path(written.replace("{", "").replace("}", "")).name
    return p if p.is_file() else None


# ---- env files -----------------------------------------------------------------------------


def env_distributions(env_file: Path) -> set[str]:
    """Normalized names of the conda and pip packages an env file lists."""
    data = yaml.safe_load(env_file.read_text(encoding="utf-8")) or {}
    names: set[str] = set()
    for dep in data.get("dependencies") or []:
        if isinstance(dep, str):
            spec = dep.split("::")[-1].strip()
            name = re.split(r"[\s=<>!~\[]", spec, maxsplit=1)[0]
            if name:
                name = normalize(name)
                names.add(normalize(CONDA_TO_PYPI.get(name, name)))
        elif isinstance(dep, dict):
            for req in dep.get("pip") or []:
                req = str(req).strip()
                if not req or req.startswith("-"):
                    continue  # options (-e ., --extra-index-url, -r file): no named package
                if "#egg=" in req:
                    names.add(normalize(req.split("#egg=")[1].split("&")[0]))
                    continue
                m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", req)
                if m and "/" not in req.split("@")[0] and not req.startswith("."):
                    names.add(normalize(m.group(1)))
    return names


# ---- imports -------------------------------------------------------------------------------


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in {"ImportError", "ModuleNotFoundError"} for t in types)


class _ImportCollector(ast.NodeVisitor):
    """Absolute module names imported by a module (relative imports resolved against `package`)."""

    def __init__(self, package: str | None):
        self.package = package
        self.imports: set[str] = set()
        self._optional = 0

    def visit_Try(self, node: ast.Try) -> None:
        optional = any(_catches_import_error(h) for h in node.handlers)
        self._optional += optional
        for stmt in node.body:
            self.visit(stmt)
        self._optional -= optional
        for part in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(part)

    visit_TryStar = visit_Try

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        if not self._optional:
            self.imports.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if self._optional:
            return
        if node.level:
            if not self.package:
                return
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1])
            mod = f"{base}.{node.module}" if node.module else base
        else:
            mod = node.module or ""
        self.imports.add(mod)
        # `from pkg import sub` may import the submodule pkg.sub
        self.imports.update(f"{mod}.{alias.name}" for alias in node.names if alias.name != "*")


def module_imports(path: Path, package: str | None) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    collector = _ImportCollector(package)
    collector.visit(tree)
    return collector.imports


def _package_module_files(module: str, src: Path) -> list[tuple[Path, str]]:
    """Files executed by importing `module` of the local package: each parent package's
    __init__.py and the module itself. Returns (file, package the file's relative imports use)."""
    files = []
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        qual = ".".join(parts[:i])
        base = src.joinpath(*parts[:i])
        if (base / "__init__.py").is_file():
            files.append((base / "__init__.py", qual))
        elif base.with_suffix(".py").is_file():
            files.append((base.with_suffix(".py"), ".".join(parts[: i - 1])))
            break
        else:
            break  # an attribute (from pkg import function), not a module
    return files


def third_party_imports(entry: Path, repo: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """Top-level third-party import names reachable from a script, each with the files importing it.

    Follows `package` modules under repo/src and sibling modules of the script's directory."""
    src = repo / "src"
    local_dir = entry.parent
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, set[str]] = {}
    seen: set[Path] = set()
    todo: list[tuple[Path, str | None]] = [(entry, None)]
    while todo:
        path, pkg = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for mod in module_imports(path, pkg):
            top = mod.split(".")[0]
            if not top or top in stdlib or top == "__future__":
                continue
            if top == package:
                todo.extend(_package_module_files(mod, src))
            elif (local_dir / f"{top}.py").is_file() and pkg is None:
                todo.append((local_dir / f"{top}.py", None))
            else:
                found.setdefault(top, set()).add(str(path.relative_to(repo)))
    return found


def distributions_for(import_name: str, mapping: dict[str, list[str]]) -> set[str]:
    dists = mapping.get(import_name)
    if dists:
        return {normalize(d) for d in dists}
    return {normalize(IMPORT_TO_DIST_FALLBACK.get(import_name, import_name))}


# ---- the check -----------------------------------------------------------------------------


def check_rules(repo: Path, mapping: dict[str, list[str]] | None = None) -> tuple[list[RuleSpec], list[str]]:
    """(rules checked, problems) for all rules of repo/workflow/rules/*.smk that have a conda env
    and run Python code."""
    mapping = importlib.metadata.packages_distributions() if mapping is None else mapping
    checked, problems = [], []
    for smk in sorted((repo / "workflow" / "rules").glob("*.smk")):
        for spec in parse_rules(smk):
            if not spec.conda or not (spec.scripts or spec.modules):
                continue
            checked.append(spec)
            env_file = (smk.parent / spec.conda).resolve()
            if not env_file.is_file():
                problems.append(f"{spec.where}: conda env file {spec.conda} not found")
                continue
            listed = env_distributions(env_file)
            entries: list[Path] = []
            for written in spec.scripts:
                path = resolve_script(written, smk, repo)
                if path is None:
                    problems.append(f"{spec.where}: script {written} not found")
                else:
                    entries.append(path)
            for mod in spec.modules:
                files = _package_module_files(mod, repo / "src") if mod.split(".")[0] == PACKAGE else []
                if not files:
                    problems.append(f"{spec.where}: module {mod} (python -m) is not a {PACKAGE} module")
                entries.extend(f for f, _ in files)
            for entry in entries:
                for name, importers in sorted(third_party_imports(entry, repo).items()):
                    dists = distributions_for(name, mapping)
                    if not dists & listed:
                        problems.append(
                            f"{spec.where}: {entry.relative_to(repo)} needs '{name}' "
                            f"(distribution {' or '.join(sorted(dists))}; imported by "
                            f"{', '.join(sorted(importers))}) but {env_file.relative_to(repo)} "
                            "does not list it"
                        )
    return checked, problems


# ---- tests ---------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")


@pytest.fixture
def mini_repo(tmp_path: Path) -> Path:
    """A tiny repo: one rule whose script reaches numpy only through two package modules."""
    _write(
        tmp_path / "workflow/rules/train.smk",
        """
        SCRIPTS = "scripts"

        rule train:
            input:
                "data.txt",
            output:
                "model.txt",
            conda:
                "../../envs/train.yaml"
            shell:
                "PYTHONPATH=src python {SCRIPTS}/train.py --in {input}"
                " --out {output}"


        rule no_env:
            output:
                "x.txt"
            shell:
                "python scripts/train.py"
        """,
    )
    _write(
        tmp_path / "scripts/train.py",
        """
        import json
        import os.path

        import yaml

        from grpo_vqa.training import run

        try:
            import ujson  # optional speed-up
        except ImportError:
            ujson = None
        """,
    )
    _write(tmp_path / "src/grpo_vqa/__init__.py", "")
    _write(tmp_path / "src/grpo_vqa/training/__init__.py", "from .core import run\n")
    _write(
        tmp_path / "src/grpo_vqa/training/core.py",
        """
        from typing import TYPE_CHECKING

        from ..imaging import load

        if TYPE_CHECKING:
            import pandas


        def run():
            import numpy as np  # lazy import: still needed at run time

            return np, load
        """,
    )
    _write(tmp_path / "src/grpo_vqa/imaging.py", "from PIL import Image\n\nload = Image.open\n")
    _write(
        tmp_path / "envs/train.yaml",
        """
        channels: [conda-forge]
        dependencies:
          - python=3.11
          - conda-forge::pillow>=10
          - pip
          - pip:
              - pyyaml==6.0.3
              - -e .
        """,
    )
    return tmp_path


MAPPING = {"yaml": ["PyYAML"], "PIL": ["Pillow"], "numpy": ["numpy"], "pandas": ["pandas"]}


def test_transitive_third_party_import_missing_from_env_is_reported(mini_repo: Path):
    checked, problems = check_rules(mini_repo, MAPPING)
    assert [r.name for r in checked] == ["train"]  # no_env has no conda env: not checked
    # numpy is reached via scripts/train.py -> grpo_vqa.training -> .core (lazy import);
    # pandas (TYPE_CHECKING), ujson (optional) and the stdlib are not needs.
    assert len(problems) == 1, problems
    assert "needs 'numpy'" in problems[0]
    assert "src/grpo_vqa/training/core.py" in problems[0]
    assert "envs/train.yaml" in problems[0]


def test_listing_the_package_fixes_it_and_conda_names_count(mini_repo: Path):
    env = mini_repo / "envs/train.yaml"
    env.write_text(env.read_text().replace("  - pip\n", "  - numpy=2.4\n  - pip\n"))
    assert check_rules(mini_repo, MAPPING)[1] == []
    # Removing pillow (reached via training/core.py -> ..imaging) must be noticed.
    env.write_text(env.read_text().replace("  - conda-forge::pillow>=10\n", ""))
    problems = check_rules(mini_repo, MAPPING)[1]
    assert len(problems) == 1 and "needs 'PIL'" in problems[0] and "src/grpo_vqa/imaging.py" in problems[0]


def test_missing_env_file_and_script_are_reported(mini_repo: Path):
    (mini_repo / "scripts/train.py").unlink()
    (mini_repo / "envs/train.yaml").unlink()
    problems = check_rules(mini_repo, MAPPING)[1]
    assert problems == ["rule train (train.smk): conda env file ../../envs/train.yaml not found"]
    _write(mini_repo / "envs/train.yaml", "dependencies: [python=3.11]\n")
    problems = check_rules(mini_repo, MAPPING)[1]
    assert problems == ["rule train (train.smk): script {SCRIPTS}/train.py not found"]


def test_env_distributions_parses_conda_and_pip_specs(tmp_path: Path):
    env = tmp_path / "env.yaml"
    _write(
        env,
        """
        dependencies:
          - python=3.11
          - pytorch::pytorch 2.3.*
          - Py_YAML>=6
          - pip
          - pip:
              - torch==2.13.0
              - math-verify[antlr]==0.9.0
              - huggingface_hub>=1
              - -e .
              - --extra-index-url https://example.org/simple
              - git+https://example.org/x.git#egg=xpkg
              - ./local/dir
        """,
    )
    assert env_distributions(env) == {
        "python",
        "torch",
        "py-yaml",
        "pip",
        "math-verify",
        "huggingface-hub",
        "xpkg",
    }


def _repo_rules() -> list[RuleSpec]:
    rules_dir = REPO / "workflow" / "rules"
    return [
        s
        for smk in sorted(rules_dir.glob("*.smk"))
        for s in parse_rules(smk)
        if s.conda and (s.scripts or s.modules)
    ]


def test_every_rule_env_lists_what_its_script_imports():
    rules = _repo_rules()
    if not rules:
        pytest.skip("no rules with a conda env and a Python script in workflow/rules/*.smk yet")
    checked, problems = check_rules(REPO)
    assert checked, "rules were found but none was checked"
    assert not problems, "conda env files miss packages their rules import:\n" + "\n".join(problems)
