"""Dependencies point down: the pieces that later features extend cannot quietly grow tangled.

Read from the source with `ast` (nothing is imported), so a forbidden import fails here with the
file and the name, not as an import cycle somewhere else.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT

# What pipelines/ and models/ may use of safetrain/: the shared errors, specs (the config schema)
# and registries — never the loop, the run record or the diagnosis.
SHARED = {"safetrain.core.errors", "safetrain.config", "safetrain.config.schema", "safetrain.core.registry"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("package", ["pipelines", "models"])
def test_pipelines_and_models_use_only_the_shared_parts_of_safetrain(package):
    wrong = {f"{path.relative_to(ROOT)}: {name}" for path in (ROOT / package).rglob("*.py")
             for name in _imports(path) if name.startswith("safetrain") and name not in SHARED}
    assert not wrong, sorted(wrong)


def test_the_loop_and_its_actions_do_not_depend_on_the_error_classifier_or_the_assembler():
    for module in ("loop", "actions", "run_state", "record"):
        used = _imports(ROOT / "safetrain" / f"{module}.py")
        assert not used & {"safetrain.diagnose.diagnosis", "safetrain.diagnose.facts", "safetrain.experiment.train"}, module


def _uses_tf_function(path: Path) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "function" and isinstance(node.value, ast.Name)
               and node.value.id == "tf" for node in ast.walk(ast.parse(path.read_text(), str(path))))


def test_tf_function_code_lives_in_one_module():
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "safetrain").rglob("*.py") if _uses_tf_function(p))
    assert users == ["safetrain/export.py", "safetrain/steps.py"]  # export: the SavedModel's serving signature


def test_the_error_kinds_the_readme_lists_are_the_codes():
    from safetrain.diagnose.diagnosis import RULES
    from safetrain.core.errors import ErrorKind

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| kind | exit |"):readme.index("**NaN/Inf**")]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))
    assert listed == {rule.kind.value for rule in RULES} | {"unknown"}
    assert listed <= {kind.value for kind in ErrorKind}
