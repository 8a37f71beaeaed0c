"""Every OUTPUT path is made by raycolor.paths, and nothing else spells one (issue 38, 1): no module but
paths joins a literal into a URI, and no module but paths holds the name of a folder or file of the layout
(docstrings and help texts, which describe the layout to a person, aside)."""

from __future__ import annotations

import ast
from pathlib import Path

import raycolor
from raycolor import paths

PACKAGE = Path(raycolor.__file__).parent
OWNER = PACKAGE / "paths.py"
# the names of the layout's own folders and files; its plain words ("images", "shards", "manifest", "model",
# "train") are also the code's dict keys and split names, and are caught by the join rule instead
NAMES = {"_stats", "_roots", "_listing", "_spool", "_lock.json", "_SUCCESS.json", "metrics.jsonl", "curves.png",
         "prior.json", "part-{id}.parquet"}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _help_texts(tree: ast.AST) -> set[int]:
    """String arguments of keyword `help=` (typer's option help: text for a person)."""
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg == "help"
            for n in ast.walk(node.value)}


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree) | _help_texts(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name == "join_uri" and any(isinstance(a, (ast.Constant, ast.JoinedStr)) for a in node.args[1:]):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} joins a literal: {ast.unparse(node)}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if node.value.strip("/") in NAMES:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} spells {node.value!r}")
    return found


def test_no_module_but_paths_spells_an_output_path():
    offences = [o for p in sorted(PACKAGE.rglob("*.py")) if p != OWNER and "storage" not in p.parts for o in _offences(p)]
    assert offences == []


def test_the_rule_finds_a_path_spelt_elsewhere(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('from raycolor import storage\nuri = storage.join_uri(out, "_stats", sid)\nname = "metrics.jsonl"\n')
    found = _offences_at(bad)
    assert any("joins a literal" in o for o in found) and any("'metrics.jsonl'" in o for o in found), found


def _offences_at(path: Path) -> list[str]:
    global PACKAGE
    saved, PACKAGE = PACKAGE, path.parent
    try:
        return _offences(path)
    finally:
        PACKAGE = saved


def test_the_layout_the_docstring_draws():
    assert paths.image_uri("s3://b/out", "ns/x.png") == "s3://b/out/images/ns/x.png"
    assert paths.derivative_uri("s3://b/out", "jpeg-400", "x.jpg") == "s3://b/out/derivatives/jpeg-400/x.jpg"
    assert paths.stats_uri("/o", "s1") == "/o/_stats/s1.json" and paths.part_uri("/o", "s1") == "/o/manifest/s1.parquet"
    assert paths.metrics_uri("/o") == "/o/metrics.jsonl" and paths.model_uri("/o") == "/o/model"
    assert paths.spool_part_uri("/o", "s1", ["b", "a"]) == paths.spool_part_uri("/o", "s1", ["a", "b"])
    assert paths.checkpoint_name(3) < paths.checkpoint_name(10)
