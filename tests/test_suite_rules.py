"""Rules the test suite keeps about itself: every test that trains a model, starts a server or runs
a beedet command in a subprocess carries the ``slow`` mark, so ``-m 'not slow'`` stays a quick loop;
tests import shared helpers from ``helpers``, never from ``conftest``."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# Session fixtures that train a checkpoint or start a server (tests/conftest.py).
HEAVY_FIXTURES = {"tiny_checkpoint", "local_server"}
# Calls that start a beedet process (helpers.run_script, the serving helper, subprocesses).
HEAVY_CALLS = ("run_script(", "running_server(", "Popen(")


def unmarked_heavy_tests(source: str) -> list[str]:
    """Names of the test functions in ``source`` (a test module) that train, serve or start a
    process, directly or through a fixture of the same module, without the ``slow`` mark (on the
    function or in the module's ``pytestmark``)."""
    tree = ast.parse(source)
    if any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
           and "slow" in ast.unparse(n.value) for n in tree.body):
        return []
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    fixtures = {n.name: n for n in functions if any("fixture" in ast.unparse(d) for d in n.decorator_list)}

    def heavy(fn: ast.FunctionDef, seen: frozenset[str] = frozenset()) -> bool:
        arguments = {a.arg for a in fn.args.args}
        if arguments & HEAVY_FIXTURES or any(call in ast.unparse(fn) for call in HEAVY_CALLS):
            return True
        return any(heavy(fixtures[a], seen | {fn.name}) for a in arguments if a in fixtures and a not in seen)

    return [fn.name for fn in functions if fn.name.startswith("test_") and heavy(fn)
            and not any("mark.slow" in ast.unparse(d) for d in fn.decorator_list)]


def test_every_test_that_trains_or_serves_is_marked_slow():
    others = [path for path in sorted(TESTS.glob("test_*.py")) if path.name != Path(__file__).name]
    found = {path.name: names for path in others if (names := unmarked_heavy_tests(path.read_text()))}
    assert not found, f"mark these @pytest.mark.slow: {found}"


def test_the_rule_can_fail():
    module = (
        "import pytest\n"
        "@pytest.fixture\ndef trained(tiny_checkpoint):\n    return tiny_checkpoint\n"
        "def test_uses_it(trained):\n    pass\n"
        "@pytest.mark.slow\ndef test_marked(tiny_checkpoint):\n    pass\n"
        "def test_runs(tmp_path):\n    run_script(['train.py'], tmp_path)\n"
        "def test_light():\n    assert 1\n"
    )
    assert unmarked_heavy_tests(module) == ["test_uses_it", "test_runs"]
    assert unmarked_heavy_tests("import pytest\npytestmark = pytest.mark.slow\n" + module) == []


def test_no_test_imports_conftest():
    others = [path for path in TESTS.glob("*.py") if path.name != Path(__file__).name]
    offenders = [p.name for p in others if "from conftest import" in p.read_text() or "import conftest\n" in p.read_text()]
    assert offenders == [], offenders
