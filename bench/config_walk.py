"""Follow ``config`` through the colorize driver's calls, as data, and count the returns to a module already left.

    .venv/bin/python bench/config_walk.py            # raycolor.pipelines.colorize:colorize, the trace and counts
    .venv/bin/python bench/config_walk.py --json

A static walk over the AST (no import of the package): from the entry function, every call that passes
``config`` to a raycolor function is followed into that function, in source order, depth first, with the
parameter that received it. A call that passes one of config's *parts* (a field that is itself one of
raycolor/config.py's dataclasses: ``config.storage``, ``config.derivatives``) is a stay in the callee, not
followed further; a scalar field handed on (``config.format``, ``config.checkpoint``) is a value, not the config.
Functions are named directly (``plan``), through a module (``planning.plan``) or, for class- and static methods,
through their class (``ledger.Book.read``, ``ModelStage.for_colorize``). Calls into storage and config (the floor
every layer stands on: I/O and the dataclasses) are left out of the stays. The trace is the module of every
function entered and of every caller resumed after a return; consecutive visits to one module are one *stay*. A
stay in a module visited before is a *return to a module already left*: for a walk through M distinct modules in
S stays, S - M of them. Calls through an instance's method, a lambda or a Ray remote are not followed (they do
not take the driver's config as a call the AST can resolve: `finish_batch` gets it through Ray Data's
fn_kwargs); each function is entered once per path (recursion stops at a function already on the stack).

Issue 38 measured 22 stays in 6 modules, 16 of them returns, and asked for at most 6. This walk gave 23 stays in 6
modules, 17 returns, at aab63e8 (the commit before the driver's bookkeeping moved to ledger.Book), and 9 stays in 4
modules, 5 returns, after it. Counting every attribute of config as a part (scalars too) it gave 31 stays in 9
modules, 22 returns, at aab63e8 (without following class methods), and 23 stays in 8 modules, 15 returns, after it
(with them): the rest are lookups of one value each, e.g. precision.check(config.precision),
formats.writable(config.format), runtime.check_memory_request(config.memory_per_cpu).
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "raycolor"


def module_path(module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    for p in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
        if p.exists():
            return p
    return None


class Module:
    def __init__(self, name: str):
        self.name = name
        self.path = module_path(name)
        self.tree = ast.parse(self.path.read_text())
        self.functions = {n.name: n for n in self.tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        # a class's class- and static methods, called through the class (``ledger.Book.read(...)``)
        self.classes = {
            n.name: {f.name: f for f in n.body if isinstance(f, ast.FunctionDef)
                     and any(isinstance(d, ast.Name) and d.id in ("classmethod", "staticmethod") for d in f.decorator_list)}
            for n in self.tree.body if isinstance(n, ast.ClassDef)
        }
        self.names: dict[str, tuple[str, str]] = {}  # local name -> (module, function) from `from m import f`
        self.modules: dict[str, str] = {}  # local name -> module, from `from pkg import mod` / `import a.b as c`
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("raycolor"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if module_path(full) is not None and a.name not in ("config",):
                        self.modules[a.asname or a.name] = full
                    else:
                        self.names[a.asname or a.name] = (node.module, a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("raycolor") and a.asname:
                        self.modules[a.asname] = a.name


_cache: dict[str, Module] = {}


def load(name: str) -> Module | None:
    if name not in _cache:
        if module_path(name) is None:
            return None
        _cache[name] = Module(name)
    return _cache[name]


def resolve(mod: Module, func: ast.expr) -> tuple[Module, ast.FunctionDef] | None:
    """The raycolor function a call's `func` names, following `from x import f` and package re-exports; a class's
    class- or static method called through the class (``Book.read``, ``ledger.Book.read``) too."""
    if isinstance(func, ast.Name):
        if func.id in mod.functions:
            return mod, mod.functions[func.id]
        if func.id in mod.names:
            return _find(*mod.names[func.id])
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.value.id in mod.modules:
            return _find(mod.modules[func.value.id], func.attr)
        if func.value.id in mod.classes:
            return _method(mod, func.value.id, func.attr)
        if func.value.id in mod.names:
            return _find(*mod.names[func.value.id], method=func.attr)
    if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute)
            and isinstance(func.value.value, ast.Name) and func.value.value.id in mod.modules):
        return _find(mod.modules[func.value.value.id], func.value.attr, method=func.attr)
    return None


def _method(m: Module, cls: str, name: str):
    fn = m.classes.get(cls, {}).get(name)
    return (m, fn) if fn is not None else None


def _find(module: str, name: str, depth: int = 0, method: str | None = None):
    m = load(module)
    if m is None or depth > 4:
        return None
    if method is not None and name in m.classes:
        return _method(m, name, method)
    if method is None and name in m.functions:
        return m, m.functions[name]
    if name in m.names:  # a package re-exporting it
        return _find(*m.names[name], depth + 1, method)
    return None


def _config_parts() -> frozenset[str]:
    """The fields of raycolor/config.py's dataclasses that hold another of its dataclasses (``storage``: a
    StorageConfig, ``derivatives``: DerivativeSpecs): the parts of a config that are themselves config. A scalar
    field (``config.format``, ``config.checkpoint``) handed on is a value, not the config."""
    tree = ast.parse((PACKAGE / "config.py").read_text())
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    names = {c.name for c in classes}
    return frozenset(
        s.target.id for c in classes for s in c.body
        if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
        and any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(s.annotation))
        or isinstance(s, ast.AnnAssign) and isinstance(s.annotation, ast.Constant)
        and any(name in str(s.annotation.value) for name in names)
    )


PARTS = _config_parts()


def _passes(arg: ast.expr, holder: str, part: bool = False) -> bool:
    """The argument is the config itself, or with part=True one of its config parts (``config.storage``)."""
    node = arg.value if isinstance(arg, ast.Starred) else arg
    if part and isinstance(node, ast.Attribute) and node.attr in PARTS:
        node = node.value
    return isinstance(node, ast.Name) and node.id == holder


def _param_for(fn: ast.FunctionDef, call: ast.Call, holder: str) -> str | None:
    params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    if any(isinstance(d, ast.Name) and d.id == "classmethod" for d in fn.decorator_list):
        params = params[1:]  # cls
    for i, arg in enumerate(call.args):
        if _passes(arg, holder) and i < len(params):
            return params[i]
    for kw in call.keywords:
        if kw.arg and _passes(kw.value, holder):
            return kw.arg
    return None


def _calls_in_order(fn: ast.FunctionDef) -> list[ast.Call]:
    """The calls in fn's own body (not in nested defs or lambdas), in source order."""
    calls = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            if isinstance(child, ast.Call):
                calls.append(child)
            visit(child)

    visit(fn)
    return sorted(calls, key=lambda c: (c.lineno, c.col_offset))


def walk(mod: Module, fn: ast.FunctionDef, holder: str, trace: list[str], stack: tuple = ()) -> None:
    trace.append(f"{mod.name}:{fn.name}")
    for call in _calls_in_order(fn):
        target = resolve(mod, call.func)
        if target is None:
            continue
        tmod, tfn = target
        if (tmod.name, tfn.name) in stack:
            continue
        param = _param_for(tfn, call, holder)
        if param is not None:
            walk(tmod, tfn, param, trace, stack + ((mod.name, fn.name),))
        elif any(_passes(a, holder, part=True) for a in [*call.args, *(k.value for k in call.keywords)]):
            trace.append(f"{tmod.name}:{tfn.name}")  # a part of the config goes there: a stay, not followed further
        else:
            continue
        trace.append(f"{mod.name}:{fn.name}")  # the caller resumes


# The floor every layer stands on: a call into storage (a read, a retry, a URI) is I/O, not the run's logic
# going back and forth, and is left out of the stays, as a call into the standard library would be.
FLOOR = ("raycolor.storage", "raycolor.config")


def stays(trace: list[str]) -> list[str]:
    out = []
    for entry in trace:
        m = entry.split(":")[0]
        if m.startswith(FLOOR):
            continue
        if not out or out[-1] != m:
            out.append(m)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entry", default="raycolor.pipelines.colorize:colorize")
    ap.add_argument("--holder", default="config")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    module, name = args.entry.split(":")
    mod = load(module)
    trace: list[str] = []
    walk(mod, mod.functions[name], args.holder, trace)
    s = stays(trace)
    seen, returns = set(), []
    for i, m in enumerate(s):
        if m in seen:
            returns.append(i)
        seen.add(m)
    result = {"entry": args.entry, "stays": len(s), "modules": len(seen), "returns": len(returns), "path": s}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{args.entry}: {len(s)} stays in {len(seen)} modules, {len(returns)} returns to a module already left")
    for i, m in enumerate(s):
        print(f"  {'<-' if i in returns else '->'} {m}")


if __name__ == "__main__":
    main()
