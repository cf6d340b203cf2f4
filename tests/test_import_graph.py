"""The package's import graph (grimp; imports inside functions count): no cycle between its modules, and its
layers import only downwards.

Layers, highest first (README, "Layout"); modules in one layer do not import each other, except inside one
subpackage:

    cli                                      the command-line wrapper of the scripts
    judge | reporting                        LLM-as-judge, tables and figures
    training | evaluation                    the pipeline's stages
    data | models | rollout | rewards        datasets, model loading, the rollout engine, reward functions
    launch | seeds | parsing | progress      helpers the layers above share
    config | io | provenance | walltime      the base
    resources                                where the package finds its files (schema, prompts, ...)
"""

from __future__ import annotations

import copy
import sys
import textwrap

import grimp
import pytest

PACKAGE = "grpo_vqa"
LAYERS = (
    ("cli",),
    ("judge", "reporting"),
    ("training", "evaluation"),
    ("data", "models", "rollout", "rewards"),
    ("launch", "seeds", "parsing", "progress"),
    ("config", "io", "provenance", "walltime"),
    ("resources",),
)


def cycles(graph: grimp.ImportGraph, package: str) -> list[str]:
    """Every circle of imports between modules of ``package``, as ``a -> b -> ... -> a`` (one per set of
    modules): an import ``a -> b`` closes one when ``b`` reaches ``a`` again."""
    modules = {m for m in graph.modules if m == package or m.startswith(package + ".")}
    found: dict[frozenset, str] = {}
    for a in sorted(modules):
        for b in sorted(graph.find_modules_directly_imported_by(a) & modules):
            back = graph.find_shortest_chain(importer=b, imported=a)
            if back:
                found.setdefault(frozenset(back), " -> ".join((a, *back)))
    return sorted(found.values())


def layer_violations(graph: grimp.ImportGraph, package: str, layers=LAYERS) -> list[str]:
    """One line per import chain from a lower layer (or a sibling in an independent layer) to a higher one."""
    illegal = graph.find_illegal_dependencies_for_layers(
        layers=[grimp.Layer(*layer, independent=True) for layer in layers], containers={package}
    )
    out = []
    for dep in sorted(illegal, key=lambda d: (d.importer, d.imported)):
        for route in sorted(dep.routes, key=lambda r: (sorted(r.heads), r.middle, sorted(r.tails))):
            chain = ["|".join(sorted(route.heads)), *route.middle, "|".join(sorted(route.tails))]
            out.append(f"{dep.importer} -> {dep.imported}: {' -> '.join(chain)}")
    return out


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(PACKAGE, cache_dir=None)


def test_every_module_is_in_a_layer(graph):
    top = {m.split(".")[1] for m in graph.modules if m.count(".") >= 1}
    layered = {name for layer in LAYERS for name in layer}
    assert top == layered, (
        f"not in a layer: {sorted(top - layered)}; layers naming no module: {sorted(layered - top)}"
    )


def test_no_import_cycle(graph):
    found = cycles(graph, PACKAGE)
    assert not found, "import cycles:\n" + "\n".join(found)


def test_layers_import_only_downwards(graph):
    found = layer_violations(graph, PACKAGE)
    assert not found, "imports against the layers (LAYERS, highest first):\n" + "\n".join(found)


def test_checker_flags_planted_violations(graph):
    """Plant a cycle and an upward import in a copy of the graph: both checks must fail on it."""
    planted = copy.deepcopy(graph)
    planted.add_import(importer="grpo_vqa.data.scenes", imported="grpo_vqa.data.build")  # build -> scenes
    planted.add_import(importer="grpo_vqa.io", imported="grpo_vqa.training.common")  # base -> training
    found = cycles(planted, PACKAGE)
    assert "grpo_vqa.data.build -> grpo_vqa.data.scenes -> grpo_vqa.data.build" in found, found
    assert any(c.startswith("grpo_vqa.io -> grpo_vqa.training.common -> ") for c in found), found
    violations = layer_violations(planted, PACKAGE)
    assert "grpo_vqa.io -> grpo_vqa.training: grpo_vqa.io -> grpo_vqa.training.common" in violations, (
        violations
    )
    # the real graph was left alone
    assert cycles(graph, PACKAGE) == [] and layer_violations(graph, PACKAGE) == []


def test_checker_sees_imports_inside_functions(tmp_path, monkeypatch):
    """A circle closed only by an import inside a function (the way the data modules used to dodge theirs),
    and a lower layer reaching up the same way, are both found."""
    pkg = tmp_path / "planted_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("from . import mid\n")
    (pkg / "mid.py").write_text(
        textwrap.dedent(
            """
            def f():
                from . import low
                from .high import g
                return low, g
            """
        )
    )
    (pkg / "high.py").write_text("def g():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("planted_pkg", None)
    g = grimp.build_graph("planted_pkg", cache_dir=None)
    assert cycles(g, "planted_pkg") == ["planted_pkg.low -> planted_pkg.mid -> planted_pkg.low"]
    violations = layer_violations(g, "planted_pkg", layers=(("high",), ("mid",), ("low",)))
    assert "planted_pkg.mid -> planted_pkg.high: planted_pkg.mid -> planted_pkg.high" in violations, (
        violations
    )
    assert "planted_pkg.low -> planted_pkg.mid: planted_pkg.low -> planted_pkg.mid" in violations, violations
