"""Facts about the package's structure, read from its source (AST), so they cannot drift.

* Layers: ``megatron_ponder/model/`` never imports ``megatron_ponder.parallel`` (parallel/ builds
  on model/), and nothing in the package imports the entry point ``megatron_ponder.pretrain``.
* Dependencies point one way: no two modules import each other, directly or around a circle
  (lazy imports inside functions count: they hide a circle, they do not break it).
* The method is written once: its operations (the Jacobi update, the ponder mixture, the
  token/thought interleaving, the loss slot) are called from ``model/passes.py`` only, and the
  vocabulary-mixing kernels from ``PonderGPTModel.ponder_mixture`` only.

``hf/remote_code/`` is left out of the call facts: it ships inside exported checkpoints and must
run without megatron_ponder, so it has its own copy of the method (checked against the same
reference by tests/unit/test_hf_modeling_matches_reference.py).
"""

import ast
from collections import defaultdict
from pathlib import Path

import megatron_ponder

PACKAGE = Path(megatron_ponder.__file__).parent
STANDALONE = PACKAGE / "hf" / "remote_code"


def _modules(folder: Path = PACKAGE):
    return sorted(folder.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).with_suffix("").as_posix()


def _imported(path: Path):
    """Every module an ``import``/``from ... import`` of this file names (lazy imports included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def _callers(function_names):
    """{function: sorted modules that call it}, calls as ``f(...)`` or ``obj.f(...)``."""
    found = defaultdict(set)
    for path in _modules():
        if STANDALONE in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name in function_names:
                    found[name].add(_name(path))
    return {name: sorted(modules) for name, modules in found.items()}


def test_model_does_not_import_parallel():
    offenders = [
        f"{_name(path)} imports {module}"
        for path in _modules(PACKAGE / "model")
        for module in _imported(path)
        if module == "megatron_ponder.parallel" or module.startswith("megatron_ponder.parallel.")
    ]
    assert not offenders, offenders


def test_nothing_in_the_package_imports_the_entry_point():
    offenders = [
        f"{_name(path)} imports {module}"
        for path in _modules()
        for module in _imported(path)
        if module == "megatron_ponder.pretrain"
    ]
    assert not offenders, offenders


def test_method_operations_are_called_from_the_pass_module_only():
    operations = {"jacobi_update", "ponder_mixture", "interleave_thoughts", "last_slot_of_each_group"}
    callers = _callers(operations)
    assert set(callers) == operations, f"an operation is never called: {callers}"
    assert callers == {name: ["megatron_ponder/model/passes"] for name in operations}


def test_vocabulary_mixing_is_called_from_the_ponder_mixture_only():
    kernels = {"probability_weighted_embedding", "vocab_parallel_softmax", "vocab_parallel_topk_mixture"}
    callers = _callers(kernels)
    assert callers == {name: ["megatron_ponder/model/ponder_gpt"] for name in kernels}


def _import_graph():
    """{module: package modules it imports} ("from a.b import c" names a.b, and a.b.c if a module)."""
    names = {_name(path).replace("/", "."): path for path in _modules() if STANDALONE not in path.parents}
    names = {name.removesuffix(".__init__"): path for name, path in names.items()}
    graph = {}
    for name, path in names.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                edges.add(node.module)
                edges.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
        graph[name] = sorted(edge for edge in edges if edge in names and edge != name)
    return graph


def _circles(graph):
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_circle_finder_finds_a_lazy_import_circle():
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert _circles(graph) == [["a", "b", "c"]]


def test_no_import_circles():
    assert _circles(_import_graph()) == []
