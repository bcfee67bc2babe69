"""The package's import order: nothing imports upward. Layers, bottom to top; a module may import
modules of its own layer or below, never above, and no import cycle exists (function-local imports
count too). A new module must be given a layer here."""
import ast
import graphlib
from pathlib import Path

QZ = Path(__file__).resolve().parent.parent / "qz"

LAYERS = [
    ["errors", "memory", "progress", "optim", "config", "streams"],      # foundations
    ["parallel", "kernels"],                                             # acceleration
    ["ops", "quant", "linear", "moe", "model"],                          # the model
    ["audio", "data", "augment", "checkpoint", "export", "baseline"],    # data and files
    ["train", "ptq", "finetune", "tta", "runtime", "generate",           # training, serving, governor
     "onnx", "governor"],
    ["demo_quant", "demo_governor", "demo", "cli", "__init__"],          # the command and the API
]


def unit(path):
    """qz/x.py -> 'x'; a file inside a package, qz/cli/x.py -> 'cli' (a package is one unit)."""
    return path.relative_to(QZ).parts[0].removesuffix(".py")


def imports():
    """unit -> the other qz units it imports (anywhere in its files, function-local imports too)."""
    out = {}
    for path in QZ.rglob("*.py"):
        here = ["qz", *path.relative_to(QZ).parts[:-1]]          # the importing file's package
        deps = out.setdefault(unit(path), set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [a.name] for a in node.names] if len(target) == 1 else [target]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".") for a in node.names]
            else:
                continue
            for t in names:
                if len(t) > 1 and t[0] == "qz" and ((QZ / f"{t[1]}.py").exists() or (QZ / t[1]).is_dir()):
                    deps.add(t[1])
    return {u: {d for d in deps if d != u} for u, deps in out.items()}


def test_every_module_has_a_layer():
    layered = [m for layer in LAYERS for m in layer]
    assert len(layered) == len(set(layered))
    assert set(layered) == {unit(p) for p in QZ.rglob("*.py")}


def test_nothing_imports_upward_and_there_is_no_cycle():
    graph = imports()
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if level[d] > level[m])
    assert not upward, upward
    list(graphlib.TopologicalSorter(graph).static_order())     # raises CycleError on a cycle


def test_the_check_sees_function_local_imports():
    """qz/cli/demo.py imports qz/demo.py only inside cmd_demo; the graph must still hold that edge."""
    top_level = {n.module for n in ast.parse((QZ / "cli" / "demo.py").read_text()).body
                 if isinstance(n, ast.ImportFrom)}
    assert "demo" not in top_level and "demo" in imports()["cli"]


def test_the_block_is_written_once():
    """model.block_forward is the one block: the runtime serves through model.run and generation
    through block_forward; neither holds its own attention, MoE or expert loop."""
    inner = ["moe_forward", "experts_forward", "dispatch(", "combine(", "route(", "swiglu", "grouped_matmul",
             "int8_experts", "def _block", "def experts", "def moe", "def _ffn", "def _qkv"]
    for name in ("runtime.py", "generate.py"):
        text = (QZ / name).read_text()
        assert not [s for s in inner if s in text], name
    assert "run(model.w" in (QZ / "runtime.py").read_text()
    assert "block_forward(x, model.w" in (QZ / "generate.py").read_text()
    assert (QZ / "model.py").read_text().count("def block_forward(") == 1
