"""Habits the code keeps: annotated public functions in src/, short entry-point functions, no sys.path edits."""
import ast
import glob
import os

from conftest import REPO


def _functions(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)], tree


def test_public_functions_of_src_are_annotated():
    missing = []
    for path in glob.glob(os.path.join(REPO, "src", "**", "*.py"), recursive=True):
        _, tree = _functions(path)
        for node in tree.body:  # module-level functions (methods of cells follow MindSpore's construct signatures)
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                args = [a for a in node.args.args + node.args.kwonlyargs if a.annotation is None]
                if node.returns is None or args:
                    missing.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name}")
    assert missing == []


def test_entry_point_functions_stay_short():
    long = []
    for script in ("train.py", "eval.py", "export.py", "predict.py"):
        functions, _ = _functions(os.path.join(REPO, script))
        long += [f"{script}:{f.name} ({f.end_lineno - f.lineno + 1} lines)" for f in functions
                 if f.end_lineno - f.lineno + 1 > 60]
    assert long == []


def test_nothing_edits_sys_path_outside_the_test_harness():
    offenders = []
    harness = (os.path.join("tests", "conftest.py"), os.path.join("tests", "test_codebase.py"))
    for path in glob.glob(os.path.join(REPO, "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, REPO)
        if rel.startswith(".venv") or rel in harness:
            continue
        text = open(path, encoding="utf-8").read()
        if "sys.path.insert" in text or "sys.path.append" in text:
            offenders.append(rel)
    assert offenders == []
