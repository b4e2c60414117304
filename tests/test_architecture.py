"""The structure the code keeps: no import cycles, short functions, registries of classes,
options declared once, docs generated from the declarations."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lorakit
from lorakit.describe import generated_docs
from lorakit.forms import FORMS
from lorakit.inits import INITS
from lorakit.optimizers import OPTIMIZERS
from lorakit.presets import ADAPTER_OPTIONS, registered_options
from lorakit.schedules import SCHEDULES

ROOT = Path(lorakit.__file__).parent
REPO = ROOT.parent.parent
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the lorakit modules it imports, counting imports inside functions and under
    ``TYPE_CHECKING`` (``from X import y`` counts as an import of ``X.y`` when that is a module)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                found = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules}
                edges |= found or {base}
        graph[name] = {edge for edge in edges if edge in modules and edge != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "lorakit.core.spec" in graph["lorakit.presets"]  # the parser sees the edges
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_core_is_the_bottom_of_the_graph():
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith("lorakit.core"):
            outside = {e for e in edges if not e.startswith("lorakit.core") and e != "lorakit.errors"}
            assert not outside, f"{name} imports {outside}"


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


@pytest.mark.parametrize("registry", [FORMS, INITS, OPTIMIZERS, SCHEDULES], ids=lambda r: r.kind)
def test_registries_hold_classes_only(registry):
    assert all(isinstance(registry.get(name), type) for name in registry)


def test_every_option_is_declared_once_with_help():
    declared: dict[str, object] = {option.name: option for option in ADAPTER_OPTIONS}
    for _, _, option in registered_options():
        assert declared.setdefault(option.name, option) is option, f"{option.name} is declared twice"
        assert option.help, f"{option.name} has no help"


def test_the_docs_are_generated_from_the_declarations():
    """``python scripts/gen_docs.py`` writes these; a stale page fails here."""
    stale = [str(path.relative_to(REPO)) for path, text in generated_docs(REPO / "docs").items()
             if not path.is_file() or path.read_text(encoding="utf-8") != text]
    assert not stale, f"stale generated docs (run python scripts/gen_docs.py): {stale}"


def test_every_preset_has_a_generated_option_table():
    pages = "".join(path.read_text(encoding="utf-8") for path in (REPO / "docs" / "methods").glob("*.md"))
    for method in lorakit.methods():
        assert f"<!-- BEGIN GENERATED: options {method} -->" in pages, method
        assert f"<!-- BEGIN GENERATED: tuned {method} -->" in pages, method


def test_the_method_table_shows_a_presets_own_values_not_the_components_defaults():
    from lorakit.describe import notes

    assert "lr_ratio=0.5" in notes("olora_plus") and "lr_ratio=16" not in notes("olora_plus")
    assert "lr_ratio=16" in notes("lora_plus") and notes("olora_plus").count("lr_ratio=") == 1


def test_lorakit_methods_fits_120_columns_and_a_closed_pipe_is_no_error():
    import subprocess
    import sys

    from lorakit.describe import method_table

    lines = method_table().splitlines()
    assert max(len(line) for line in lines) <= 120 and any(line.endswith("…") for line in lines)
    assert {line.split()[0] for line in lines[2:] if line.strip() and not line.startswith("lorakit")} >= {
        "lora", "olora_plus", "eva", "lora_ga"}
    reader = subprocess.Popen([sys.executable, "-m", "lorakit", "methods"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    reader.stdout.close()  # gone before lorakit writes a line (its imports take seconds)
    assert reader.wait(timeout=120) == 0 and reader.stderr.read() == ""


def test_components_that_act_at_steps_declare_it():
    """``acts_at_steps`` (what the DeepSpeed guard reads) matches whether a recipe or schedule
    overrides the step hooks."""
    from lorakit.optimizers import OPTIMIZERS
    from lorakit.optimizers.base import OptimizerRecipe
    from lorakit.schedules import SCHEDULES
    from lorakit.schedules.base import Schedule

    for registry, base in ((OPTIMIZERS, OptimizerRecipe), (SCHEDULES, Schedule)):
        for name in registry.names():
            cls = registry.get(name)
            overrides = any(getattr(cls, hook) is not getattr(base, hook) for hook in ("before_step", "after_step"))
            assert cls.acts_at_steps == overrides, name


def _is_json_call(node: ast.AST, name: str) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "json")


def test_every_json_text_is_strict():
    """No NaN or Infinity in any JSON lorakit writes: each ``json.dumps`` goes through
    ``lorakit.io.json_text`` or passes ``allow_nan=False``. Exempt, since they write nothing: a
    round trip ``json.loads(json.dumps(x))``, and a value shown in a message (the line says
    ``# shown, not written``)."""
    loose = []
    for path in ROOT.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        tree, lines = ast.parse(source), source.splitlines()
        round_trips = {id(arg) for node in ast.walk(tree) if _is_json_call(node, "loads") for arg in node.args}
        for node in ast.walk(tree):
            strict = any(k.arg == "allow_nan" and isinstance(k.value, ast.Constant) and k.value.value is False
                         for k in getattr(node, "keywords", []))
            shown = "# shown, not written" in lines[getattr(node, "lineno", 1) - 1]
            if _is_json_call(node, "dumps") and not (strict or shown) and id(node) not in round_trips:
                loose.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not loose, f"json.dumps without allow_nan=False (use lorakit.io.json_text): {loose}"
