"""The package's import order: nothing imports upward. Layers, bottom to top; a module may import
modules of its own layer or below, never above, and no import cycle exists (function-local imports
count too). A new module must be given a layer here."""
import ast
import graphlib
from pathlib import Path

QZ = Path(__file__).resolve().parent.parent / "qz"

LAYERS = [
    ["errors", "memory", "progress", "optim", "config"],                 # foundations
    ["parallel", "kernels"],                                             # acceleration
    ["ops", "quant", "moe", "model"],                                    # the model
    ["audio", "data", "checkpoint", "export", "baseline"],               # data and files
    ["train", "ptq", "finetune", "tta", "runtime", "generate",           # training, serving, governor
     "governor", "energy", "simulate"],
    ["demo_quant", "demo_governor", "demo", "cli", "__init__"],          # the command and the API
]


def imports():
    """module -> the qz modules it imports (anywhere in the file)."""
    out = {}
    for path in QZ.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("qz")):
                parts = (node.module or "").split(".")
                if node.level == 1 and node.module:
                    deps.add(parts[0])
                elif node.level == 0 and len(parts) > 1:
                    deps.add(parts[1])
                else:
                    deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith("qz."))
        out[path.stem] = {d for d in deps if (QZ / f"{d}.py").exists() and d != path.stem}
    return out


def test_every_module_has_a_layer():
    layered = [m for layer in LAYERS for m in layer]
    assert len(layered) == len(set(layered))
    assert set(layered) == {p.stem for p in QZ.glob("*.py")}


def test_nothing_imports_upward_and_there_is_no_cycle():
    graph = imports()
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if level[d] > level[m])
    assert not upward, upward
    list(graphlib.TopologicalSorter(graph).static_order())     # raises CycleError on a cycle


def test_the_check_sees_function_local_imports():
    """cli imports demo only inside cmd_demo; the graph must still hold that edge."""
    top_level = {n.module for n in ast.parse((QZ / "cli.py").read_text()).body
                 if isinstance(n, ast.ImportFrom)}
    assert "demo" not in top_level and "demo" in imports()["cli"]
