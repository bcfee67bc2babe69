"""No pickle anywhere (docs/spec.md §6): an AST scan of every .py file in qz/ and scripts/.

The source is parsed, not grepped, so a comment or docstring that says "no
pickle" does not trip the scan, and `import pickle as p` still does. Flagged:

* importing a pickle-based module (pickle, dill, shelve, marshal, joblib, ...),
  also through importlib.import_module("...") or __import__;
* calling eval, exec, compile or __import__ (by name, or via builtins);
* `allow_pickle=` with anything but the literal False, on any call;
* np.load / numpy.load (any alias) without an explicit `allow_pickle=False`:
  NumPy's default is False only since 1.16.3, and saying it keeps the intent
  visible where the file is read;
* `.to_pickle` / `.read_pickle` style attributes (pandas and friends).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "pickletools", "copyreg", "dill", "cloudpickle",
                  "shelve", "marshal", "joblib"}
BANNED_CALLS = {"eval", "exec", "compile", "__import__"}


def _banned(module: str) -> bool:
    return module.split(".")[0] in BANNED_MODULES


def pickle_problems(source: str, filename: str = "<string>") -> list[str]:
    """Every pickle/eval use in `source`, as "filename:line: what"."""
    tree = ast.parse(source, filename)
    numpy_names, load_names, problems = {"np", "numpy"}, set(), []

    def flag(node, what):
        problems.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):  # aliases first: `import numpy as xp`, `from numpy import load as L`
        if isinstance(node, ast.Import):
            numpy_names |= {a.asname for a in node.names if a.name == "numpy" and a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module == "numpy":
            load_names |= {a.asname or a.name for a in node.names if a.name == "load"}

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _banned(a.name):
                    flag(node, f"import {a.name}")
        elif isinstance(node, ast.ImportFrom):
            if node.module and _banned(node.module):
                flag(node, f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and "pickle" in node.attr.lower():
            flag(node, f".{node.attr}")
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else None
            if name in BANNED_CALLS or (isinstance(f, ast.Attribute) and f.attr in BANNED_CALLS
                                        and isinstance(f.value, ast.Name)
                                        and f.value.id in ("builtins", "__builtins__")):
                flag(node, f"call to {ast.unparse(f)}")
            if (isinstance(f, ast.Attribute) and f.attr == "import_module" and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                    and _banned(node.args[0].value)):
                flag(node, f"import_module({node.args[0].value!r})")
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant)
                                                     and kw.value.value is False):
                    flag(node, f"allow_pickle={ast.unparse(kw.value)}")
            is_np_load = (isinstance(f, ast.Attribute) and f.attr == "load"
                          and isinstance(f.value, ast.Name) and f.value.id in numpy_names) \
                or name in load_names
            if is_np_load and not any(kw.arg == "allow_pickle" for kw in node.keywords):
                flag(node, f"{ast.unparse(f)}(...) without allow_pickle=False")
    return sorted(problems)


def _sources():
    files = sorted([*(ROOT / "qz").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")])
    return [p for p in files if "__pycache__" not in p.parts]


def test_sources_have_no_pickle():
    files = _sources()
    names = {p.relative_to(ROOT).as_posix() for p in files}
    # the scan must not be vacuous: the reader and a loader of .npz files are in it
    assert {"qz/checkpoint.py", "qz/data.py"} <= names, f"scan missed files: {sorted(names)[:10]}"
    problems = [p for f in files
                for p in pickle_problems(f.read_text(encoding="utf-8"), f.relative_to(ROOT).as_posix())]
    assert not problems, "pickle/eval in the sources (docs/spec.md §6):\n" + "\n".join(problems)


@pytest.mark.parametrize("source, what", [
    ("import pickle", "import pickle"),
    ("import os, cPickle as p", "import cPickle"),
    ("import pickle.x", "import pickle.x"),
    ("from dill import loads", "from dill"),
    ("from joblib.numpy_pickle import load", "from joblib.numpy_pickle"),
    ("import shelve", "import shelve"),
    ("import marshal", "import marshal"),
    ("import importlib\nm = importlib.import_module('pickle')", "import_module('pickle')"),
    ("x = eval('1')", "call to eval"),
    ("exec('x = 1')", "call to exec"),
    ("c = compile('1', 'f', 'eval')", "call to compile"),
    ("m = __import__('os')", "call to __import__"),
    ("import builtins\nbuiltins.eval('1')", "call to builtins.eval"),
    ("import numpy as np\nnp.load('x.npy')", "without allow_pickle=False"),
    ("import numpy\nnumpy.load('x.npz')", "without allow_pickle=False"),
    ("import numpy as xp\nxp.load('x.npz')", "without allow_pickle=False"),
    ("from numpy import load as L\nL('x.npz')", "without allow_pickle=False"),
    ("import numpy as np\nnp.load('x', allow_pickle=True)", "allow_pickle=True"),
    ("import numpy as np\nnp.load('x', allow_pickle=flag)", "allow_pickle=flag"),
    ("import numpy as np\nnp.save('x', a, allow_pickle=True)", "allow_pickle=True"),
    ("df.to_pickle('x')", ".to_pickle"),
], ids=lambda v: v if len(v) < 30 else None)
def test_checker_flags(source, what):
    problems = pickle_problems(source, "bad.py")
    assert any(what in p for p in problems), f"{source!r}: expected {what!r}, got {problems}"
    assert all(p.startswith("bad.py:") for p in problems), problems


def test_checker_ignores_words_and_safe_calls():
    source = '''"""No pickle here: we never call eval( or exec( or allow_pickle=True."""
import re
import numpy as np

# import pickle  -- a comment, not an import
NOTE = "pickle.loads(data); np.load(path)"


def evaluate(model, path):
    model.eval()  # a method named eval is not the builtin
    pattern = re.compile(r"pickle")
    with np.load(path, allow_pickle=False) as z:
        return pattern, z["x"], np.loadtxt(path)
'''
    assert pickle_problems(source) == []
