"""The floors (docs/architecture.md): dependencies point down, so the pieces later features extend
cannot quietly grow tangled.

Read from the source with `ast` (nothing is imported), so a forbidden import fails here with the
file and the name, not as an import cycle somewhere else. Only the last test imports anything, in
a fresh process, to show which modules stay free of TensorFlow.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import ROOT

# The parts of safetrain, by floor; a part may import its own modules and the parts listed for it.
ENTRY_POINTS = {"safetrain.cli", "safetrain.__main__", "safetrain.predict", "safetrain.doctor", "safetrain.lr_find",
                "safetrain.trial_worker"}
MAY_IMPORT = {
    "core": set(),                                                     # floor 1
    "config": {"core"},                                                # floor 2
    "pipelines": {"core", "config"},                                   # floor 3
    "models": {"core", "config"},
    "train": {"core", "config", "models"},                             # floor 4
    "diagnose": {"core"},
    "record": {"core"},
    "experiment": {"core", "config", "pipelines", "models", "train", "diagnose", "record"},  # floor 5
    "entry": {"core", "config", "pipelines", "models", "train", "diagnose", "record", "experiment"},  # floor 6
}
# pipelines/ and models/ may use only the schema and where the config tree lives of safetrain.config
FOUNDATION_CONFIG = {"safetrain.config", "safetrain.config.schema"}
LIMITS = {"module_lines": 450, "function_lines": 80}


def _modules() -> dict[str, Path]:
    """Module name -> file, with pipelines/ and models/ under the names they install as."""
    found = {}
    for top in ("safetrain", "pipelines", "models"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            found[name if top == "safetrain" else "safetrain." + name] = path
    return found


MODULES = _modules()


def _part(module: str) -> str:
    if module in ENTRY_POINTS:
        return "entry"
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "package"


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """The project modules `module` imports (anywhere in the file, lazily or not)."""
    path = MODULES[module]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in ("pipelines", "models"):  # the checkout's folder names: never
                found.add(name)
            elif (target := _resolve(name)) and target != module and target.startswith("safetrain"):
                found.add(target)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def test_no_module_imports_pipelines_or_models_by_their_folder_names():
    wrong = sorted(f"{m}: {t}" for m, targets in GRAPH.items() for t in targets if not t.startswith("safetrain"))
    assert not wrong, f"import safetrain.pipelines / safetrain.models instead: {wrong}"


def test_each_floor_imports_only_the_floors_below_it():
    wrong = []
    for module, targets in GRAPH.items():
        part = _part(module)
        if part == "package":
            continue  # safetrain/__init__.py: the version, nothing imported
        if part not in MAY_IMPORT:
            wrong.append(f"{module}: not on a floor (add its part to MAY_IMPORT and docs/architecture.md)")
            continue
        allowed = MAY_IMPORT[part]
        for target in targets:
            other = _part(target)
            if other == "entry":
                wrong.append(f"{module} imports the entry point {target}")
            elif other != part and other not in allowed:
                wrong.append(f"{module} ({part}) imports {target} ({other})")
            elif part in ("pipelines", "models") and other == "config" and target not in FOUNDATION_CONFIG:
                wrong.append(f"{module} imports {target}: pipelines/ and models/ may use only the config schema")
    assert not wrong, "\n".join(sorted(wrong))


def test_pipelines_and_models_never_reach_into_each_other():
    crossing = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                      if {_part(m), _part(t)} == {"pipelines", "models"})
    assert not crossing, crossing


def test_there_is_no_import_circle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not circles, circles


def test_the_foundation_imports_no_tensorflow_keras_or_hydra_at_import():
    heavy = ("tensorflow", "keras", "hydra", "omegaconf")
    wrong = []
    for module, path in MODULES.items():
        if _part(module) != "core":
            continue
        for node in ast.parse(path.read_text()).body:  # module level only; inside functions is lazy
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            wrong += [f"{module}: {n}" for n in names if n.split(".")[0] in heavy]
    assert not wrong, wrong


def test_modules_and_functions_stay_small():
    too_big = []
    for module, path in MODULES.items():
        text = path.read_text()
        if (lines := len(text.splitlines())) > LIMITS["module_lines"]:
            too_big.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LIMITS["function_lines"]:
                    too_big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}(): {length} lines")
    assert not too_big, too_big


def _uses_tf_function(path: Path) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "function" and isinstance(node.value, ast.Name)
               and node.value.id == "tf" for node in ast.walk(ast.parse(path.read_text(), str(path))))


def test_tf_function_code_lives_in_one_module():
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "safetrain").rglob("*.py") if _uses_tf_function(p))
    # export: the SavedModel's serving signature
    assert users == ["safetrain/experiment/export.py", "safetrain/train/steps.py"]


def test_the_loop_and_its_actions_do_not_depend_on_the_diagnosis_or_the_run():
    for module in ("safetrain.train.loop", "safetrain.train.actions", "safetrain.core.run_state"):
        assert not {_part(t) for t in GRAPH[module]} & {"diagnose", "experiment", "record"}, module


def test_the_cli_validation_and_the_run_module_load_no_tensorflow():
    """Config errors come before TensorFlow is imported (well under a second)."""
    code = ("import sys, safetrain.cli, safetrain.experiment.app, safetrain.experiment.validate, "
            "safetrain.experiment.run; print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_periodic_action_is_added_in_one_list():
    """The actions a run has are named in experiment/assemble.py and nowhere else in the run."""
    names = {node.name for node in ast.walk(ast.parse((ROOT / "safetrain/train/actions.py").read_text()))
             if isinstance(node, ast.ClassDef) and any(getattr(b, "id", "") == "BaseAction" for b in node.bases)}
    assert names >= {"Evaluate", "LogScalars", "SaveCheckpoints", "SelectBest"}
    # The gradient probe is also the loop's own switch to the probing step: made with the loop.
    names.discard("GradientProbe")
    users = defaultdict(set)
    for module, path in MODULES.items():
        text = path.read_text()
        for name in names:
            if module != "safetrain.train.actions" and re.search(rf"\b{name}\(", text):
                users[name].add(module)
    constructed = {name: sorted(where) for name, where in users.items()}
    assert all(where == ["safetrain.experiment.assemble"] for where in constructed.values()), constructed


def test_the_error_kinds_the_docs_list_are_the_codes():
    from safetrain.core.errors import ErrorKind
    from safetrain.diagnose.diagnosis import RULES

    page = (ROOT / "docs" / "errors.md").read_text()
    table = page[page.index("| kind | exit |"):page.index("**NaN/Inf**")]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))
    assert listed == {rule.kind.value for rule in RULES} | {"unknown"}
    assert listed <= {kind.value for kind in ErrorKind}


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_every_relative_link_resolves_inside_the_repository(page):
    path = ROOT / page
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    broken = []
    for target in targets:
        if re.match(r"[a-z]+:", target):
            broken.append(f"{target} (links outside the repository)")
            continue
        resolved = (path.parent / target).resolve()
        if not resolved.exists() or not resolved.is_relative_to(ROOT):
            broken.append(target)
    assert not broken, broken
