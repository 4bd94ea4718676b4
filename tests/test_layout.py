"""The reading path, checked from the code itself: dependencies point one way, `train →
layers → engine` (DESIGN.md), with no import cycle; the engine's code (its prose aside) spells
no layer's name; the config builds no model; no command module is imported for its helpers; no
`nonlocal` on the training side."""
import ast
import os
import re

from layers.model import Decoder, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("engine", "layers", "train")  # each imports only from itself and those before it
# Commands whose modules are the command and nothing else others need (the trainer and
# nano2_prepare's module also hold the training loop and the data preparation they run).
COMMAND_MODULES = ("train.gradcheck", "train.debug", "train.timing", "train.sample", "train.hf")


def sources(folders):
    """{module name: parsed tree} of every .py file under the folders."""
    trees = {}
    for folder in folders:
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for file in files:
                if file.endswith(".py"):
                    path = os.path.join(directory, file)
                    module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                    with open(path, encoding="utf-8") as f:
                        trees[module] = ast.parse(f.read(), path)
    return trees


def imports(tree, known):
    """The modules among `known` that a tree imports, anywhere in it (function bodies too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                      for alias in node.names}
    return found & set(known)


def test_dependencies_point_one_way_with_no_cycle():
    trees = sources(PACKAGES)
    graph = {module: imports(tree, trees) for module, tree in trees.items()}
    rank = {package: i for i, package in enumerate(reversed(PACKAGES))}  # train 0, layers 1, engine 2
    back_edges = [(a, b) for a, targets in graph.items() for b in targets
                  if rank[b.split(".")[0]] < rank[a.split(".")[0]]]
    assert back_edges == []

    def cycle_from(module, path):
        if module in path:
            return path[path.index(module):] + [module]
        for target in graph[module]:
            found = cycle_from(target, path + [module])
            if found:
                return found
        return None
    assert [c for c in (cycle_from(m, []) for m in graph) if c] == []


def docstrings(tree):
    """The docstring nodes of a module and its classes and functions: prose, which parses nothing."""
    bodies = [tree] + [node for node in ast.walk(tree)
                       if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    return {id(body.body[0].value) for body in bodies
            if body.body and isinstance(body.body[0], ast.Expr) and isinstance(body.body[0].value, ast.Constant)}


def test_the_engine_spells_no_layer_name():
    model = Decoder(ModelConfig(n_layer=1))
    names = {name for name, _ in model.named_layers()} | set(model.store.params)
    parts = {part for name in names for part in name.split(".")} - {"0", "weight", "bias", "head", "pos"}
    # A CUDA source is named for its kernel (gelu.cu), not for a layer.
    spelled = re.compile(r"(?<!\w)(" + "|".join(sorted(parts)) + r")(?![\w]|\.cu\b)")
    found = []
    for module, tree in sources(["engine"]).items():
        prose = docstrings(tree)
        found += [(module, node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)
                  and isinstance(node.value, str) and id(node) not in prose and spelled.search(node.value)]
    assert found == []


def test_the_config_builds_no_model():
    tree = sources(["train"])["train.config"]
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert "ModelConfig" in names and not names & {"Decoder", "build_model", "set_up_rank", "init_parameters"}


def test_no_command_module_is_imported_for_its_helpers():
    trees = sources(PACKAGES + ("bench",))
    importers = {module: sorted(m for m, tree in trees.items() if module in imports(tree, trees))
                 for module in COMMAND_MODULES}
    assert importers == {module: [] for module in COMMAND_MODULES}


def test_no_nonlocal_on_the_training_side():
    trees = sources(["train", "layers"])
    assert [m for m, tree in trees.items() if any(isinstance(n, ast.Nonlocal) for n in ast.walk(tree))] == []


def test_every_kernel_the_code_asks_for_is_in_every_backend():
    """`kernels.of(x).NAME` reaches cpu.py or gpu.py: each must define NAME (gpu.py is read, not
    imported, since it needs CuPy), and reference.py must spec it, so a machine without a GPU
    still finds a kernel the GPU backend lacks."""
    trees = sources(PACKAGES)
    asked = {node.attr for tree in trees.values() for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Call)
             and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "of"}

    def defined(module):
        return {n.name for n in trees[module].body if isinstance(n, ast.FunctionDef)} | \
            {t.id for n in trees[module].body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert {"matmul", "rmsnorm_forward", "rotary_forward", "adamw_step"} <= asked
    for module in ("engine.kernels.cpu", "engine.kernels.gpu", "engine.kernels.reference"):
        assert asked <= defined(module), (module, sorted(asked - defined(module)))
