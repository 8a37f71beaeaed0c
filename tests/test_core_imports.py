import ast
import subprocess
import sys
from pathlib import Path

import raycolor

PACKAGE = Path(raycolor.__file__).parent
# The layers, lowest first: a module imports only from its own layer or those below it. The surface (cli, demo)
# is everything that is not in a sub-package. docs/architecture.md draws the same stack.
LAYERS = ("config", "storage", "core", "paths", "inputs", "outputs", "pipelines", "surface")
BELOW_RAY = ("config", "storage", "core", "paths", "inputs", "outputs")


def _layer(module: str) -> str:
    """raycolor.<x>[.<y>] -> its layer; the package root (raycolor.__version__) is the lowest."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__init__", "__version__", "config"):
        return "config"
    return parts[1] if parts[1] in LAYERS else "surface"


def _modules() -> dict[str, Path]:
    return {
        ".".join(("raycolor", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, raycolor module or name) for every import in the file: lazy ones, and those under TYPE_CHECKING
    too (a type hint that reaches up a layer or closes a loop couples the modules as much as a call does)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("raycolor"):
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("raycolor")]
    return found


def _module_of(target: str, modules) -> str | None:
    """raycolor.a.b[.name] -> the module it imports from (the longest prefix that is a module)."""
    parts = target.split(".")
    return next((m for k in range(len(parts), 0, -1) if (m := ".".join(parts[:k])) in modules), None)


def _import_graph() -> dict[str, set[str]]:
    """module -> the raycolor modules it imports. A module's import of its own package (or an ancestor
    package), i.e. `from raycolor.inputs import Item` inside raycolor/inputs/, is not an edge: it names the
    package's public face, which Python has already begun importing before the module itself."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        graph[module] = set()
        for _, target in _imports(path):
            to = _module_of(target, modules)
            if to is None or to == module or (path.name != "__init__.py" and module.startswith(to + ".")):
                continue
            graph[module].add(to)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_a_loop():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_loop_between_modules_even_in_type_hints():
    """Modules import each other one way: no loop through lazy imports or TYPE_CHECKING ones (a loop closed
    only by a type hint is still two modules that cannot be understood, or moved, apart)."""
    assert _cycles(_import_graph()) == []


def test_every_module_belongs_to_a_layer_the_test_knows():
    layers = {_layer(m) for m in _modules()}
    assert layers == set(LAYERS), layers
    assert _layer("raycolor.core.colorize") == "core" and _layer("raycolor.cli") == "surface"


def test_layers_import_only_downwards():
    """No module imports from a layer above its own (so there are no cycles between layers): the core never
    sees inputs, the ledger or Ray's pipelines; storage sees nothing but config."""
    upward = [
        f"{module}:{line} imports {target}"
        for module, path in _modules().items()
        for line, target in _imports(path)
        if LAYERS.index(_layer(target)) > LAYERS.index(_layer(module))
    ]
    assert not upward, upward


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_aliases(tree: ast.AST, modules: set[str]) -> dict[str, str]:
    """Local name -> raycolor module, for every import that binds a module (`from raycolor.core import images`,
    `import raycolor.x as y`)."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("raycolor"):
            for a in node.names:
                if f"{node.module}.{a.name}" in modules:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in modules and a.asname:
                    aliases[a.asname] = a.name
    return aliases


def test_no_module_uses_another_modules_private_name():
    """`from raycolor.x import _name`, or `x._name` on another raycolor module: what is shared is public."""
    modules = _modules()
    used = []
    for module, path in modules.items():
        for line, target in _imports(path):
            if _private(target.rsplit(".", 1)[-1]):
                used.append(f"{module}:{line} imports {target}")
        tree = ast.parse(path.read_text())
        aliases = _module_aliases(tree, set(modules))
        used += [
            f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
            and aliases[node.value.id] != module and _private(node.attr)
        ]
    assert not used, used


def test_the_layers_below_the_pipelines_do_not_import_ray():
    modules = sorted(m for m in _modules() if _layer(m) in BELOW_RAY)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray.'))[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_planning_imports_no_torch():
    """`raycolor list` and the planners import raycolor.pipelines.planning: without torch (~3 s and ~500 MB)."""
    code = "import sys, raycolor.pipelines.planning\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_stages_import_torch_only_where_they_use_it():
    """A merge, expansion or listing task unpickles its function from raycolor.pipelines.stages in a process
    of its own (a 0-CPU head starts one per merge); only decode, the model and compose need torch."""
    code = "import sys, raycolor.pipelines.stages\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_colorize_driver_plans_without_torch(tiny_ckpt):
    """The colorize driver reads the checkpoint's config.json and sizes the run (blocks, the memory budget) but
    runs no model: `raycolor colorize` must not pay ~2 s of CPU and ~300 MB for torch before its first line."""
    code = (
        "import sys\n"
        "from raycolor.config import ColorizeConfig\n"
        "from raycolor.pipelines.colorize import check_config, resolve_model\n"
        "from raycolor.pipelines.stages import ModelStage\n"
        "import raycolor.cli\n"
        f"cfg = ColorizeConfig(inputs=('x',), output='/tmp/o', checkpoint={tiny_ckpt!r}, memory_per_cpu=2**30)\n"
        "meta, size = resolve_model(cfg.checkpoint, None, store=cfg.storage)\n"
        "check_config(cfg)\n"
        "stage = ModelStage.for_colorize(cfg, size)\n"
        "assert stage.block_pixels > 0 and stage.pixel_limit()[0] > 0 and stage.dataset_limits(2)\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_warning_from_our_code_fails_the_suite():
    """pyproject's filterwarnings turns any warning raised from a raycolor module into an error; a third
    party's stays a warning (Ray Data's chatter is handled by runtime.quiet_stderr)."""
    import warnings

    import pytest

    with pytest.raises(UserWarning):
        warnings.warn_explicit("ours", UserWarning, "raycolor/x.py", 1, module="raycolor.x")
    with pytest.warns(UserWarning):
        warnings.warn_explicit("theirs", UserWarning, "other/x.py", 1, module="other.x")


def test_storage_and_inputs_load_only_what_they_stand_on():
    """What importing storage or inputs loads (the static test above sees only import lines): storage loads no
    other raycolor layer; inputs loads the decoder (its reading loop decodes) but not the ledger, Ray or torch,
    so `raycolor list` and the planners stay cheap; the suffix sets are the core's one definition."""
    code = (
        "import sys, raycolor.storage\n"
        "assert not {'raycolor.inputs', 'raycolor.outputs.ledger', 'raycolor.core.images'} & set(sys.modules)\n"
        "import raycolor.inputs, raycolor.core.suffixes\n"
        "assert not {'raycolor.outputs.ledger', 'ray', 'torch'} & set(sys.modules)\n"
        "assert raycolor.inputs.IMAGE_SUFFIXES is raycolor.core.suffixes.IMAGE_SUFFIXES\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_block_sizing_rule():
    """runtime.rows_per_block (no Ray when cpus is given): ~4 blocks per CPU, capped, never below 1 row."""
    from raycolor.pipelines.runtime import MAX_BLOCK_ROWS, rows_per_block

    assert MAX_BLOCK_ROWS == 128
    assert [rows_per_block(n, 2) for n in (0, 1, 8, 9, 80, 1024, 2_000_000)] == [1, 1, 1, 2, 10, 128, 128]
    assert rows_per_block(2_000_000, 2, cap=64) == 64 and rows_per_block(100, 0) == 25  # cpus at least 1


def test_training_modules_import_without_ray():
    """The fast tier imports the training steps, the transforms and CheckpointStore with `import ray` disabled:
    every module of pipelines.training imports Ray only where it uses it; the hold-out maths and the data wiring
    not even torch (Ray Train's SplitCoordinator and the expand tasks unpickle functions of training.data and
    run no colour maths)."""
    modules = sorted(m for m in _modules() if m.startswith("raycolor.pipelines.training."))
    code = (
        "import importlib, sys\n"
        "sys.modules['ray'] = None\n"
        "import raycolor.pipelines.training.split, raycolor.pipelines.training.data\n"
        "assert 'torch' not in sys.modules\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
    )
    assert "raycolor.pipelines.training.driver" in modules
    subprocess.run([sys.executable, "-c", code], check=True)
