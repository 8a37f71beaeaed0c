"""--dedupe content (issue 36, 4): two inputs of one run with the same bytes are written once; the copy's row is
ok, names the first's outputs and says `duplicate_of`. Copies in one finish batch, in a later batch and in another
shard; verify still finds every file once. Ray-free (the stages by hand, Claims in place of the driver's actor),
then once through the CLI on local Ray."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_stages import GOOD, _config, _inputs, _run_stages, _shards

from raycolor.core import checkpoint
from raycolor.outputs import fixity
from raycolor.pipelines.colorize import check_config
from raycolor.pipelines.stages import Claims

# copies of GOOD's first and third images under other names: "z1" lands in the same block as another copy, the
# rest in later blocks and (shard size 3) other shards
COPIES = {"copy/a-again.png": "a.png", "copy/c-again.png": "c.png", "copy/z1.png": "a.png"}


def _rows(out: Path) -> list[dict]:
    return [r for p in sorted((out / "manifest").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return checkpoint.load(tiny_ckpt)


def test_copies_are_written_once_and_point_at_the_first(tmp_path, tiny_ckpt, model):
    m, meta = model
    folder = tmp_path / "in"
    manifest = _inputs(folder)
    for rel, of in COPIES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes((folder / of).read_bytes())
    manifest.write_text(manifest.read_text() + "".join(f"{rel}\n" for rel in COPIES))
    out = tmp_path / "out"
    config = _config(manifest, out, tiny_ckpt, dedupe="content")
    check_config(config)
    _run_stages(config, _shards(manifest, 3), m, meta, block_rows=4, claims=Claims())
    rows = {Path(r["source"]).relative_to(folder).as_posix(): r for r in _rows(out)}
    assert len(rows) == len(GOOD) + len(COPIES) and {r["status"] for r in rows.values()} == {"ok"}
    for rel, r in rows.items():
        if rel in COPIES:  # the first input with those bytes wrote them: the copy names its outputs
            first = rows[COPIES[rel]]
            assert r["duplicate_of"] == first["source"]
            assert (r["output"], r["sha256"], r["outputs"]) == (first["output"], first["sha256"], first["outputs"])
            assert r["source_sha256"] == first["source_sha256"]
        else:
            assert r["duplicate_of"] is None and Path(r["output"]).is_file()
    written = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*") if p.is_file())
    assert written == sorted(Path(rel).with_suffix(".png").as_posix() for rel, _ in GOOD)  # no copy written
    report = fixity.Report()
    for part in fixity.part_uris(str(out)):
        report.merge(fixity.check_part(part))
    assert report.problems == 0 and report.ok == len(GOOD)  # each file checked once, by its first's row


def test_a_copy_whose_first_could_not_be_written_is_written_itself(tmp_path, tiny_ckpt, model):
    """In one batch: sub/b.jpg's output path is blocked (a folder stands where its file goes), so its write fails; its
    copy is then written itself, not pointed at a file that is not there, and the task ends normally (the stages
by hand cut this manifest into parts a | b, again | c, d | e)."""
    m, meta = model
    folder = tmp_path / "in"
    manifest = _inputs(folder)
    (folder / "again.jpg").write_bytes((folder / "sub" / "b.jpg").read_bytes())
    manifest.write_text(manifest.read_text().replace("sub/b.jpg\n", "sub/b.jpg\nagain.jpg\n", 1))
    out = tmp_path / "out"
    (out / "images" / "sub" / "b.png").mkdir(parents=True)  # where sub/b.jpg's output goes
    _run_stages(_config(manifest, out, tiny_ckpt, dedupe="content"), _shards(manifest, 100), m, meta,
                block_rows=100, claims=Claims())
    rows = {Path(r["source"]).name: r for r in _rows(out)}
    assert rows["b.jpg"]["status"] == "error" and rows["b.jpg"]["error"].startswith("write_failed")
    assert rows["again.jpg"]["status"] == "ok" and rows["again.jpg"]["duplicate_of"] is None
    assert (out / "images" / "again.png").is_file()


def test_without_dedupe_every_copy_is_written(tmp_path, tiny_ckpt, model):
    m, meta = model
    folder = tmp_path / "in"
    manifest = _inputs(folder)
    (folder / "again.png").write_bytes((folder / "a.png").read_bytes())
    manifest.write_text(manifest.read_text() + "again.png\n")
    _run_stages(_config(manifest, tmp_path / "out", tiny_ckpt), _shards(manifest, 3), m, meta)
    rows = _rows(tmp_path / "out")
    assert all(r["duplicate_of"] is None for r in rows) and (tmp_path / "out" / "images" / "again.png").is_file()


def test_dedupe_needs_the_files_layout(tmp_path):
    from raycolor.config import ColorizeConfig

    base = ColorizeConfig(inputs=("x",), output=str(tmp_path / "o"), checkpoint="c", dedupe="content")
    check_config(base)
    with pytest.raises(ValueError, match="--dedupe content needs --layout files"):
        check_config(dataclasses.replace(base, layout="webdataset"))
    with pytest.raises(ValueError, match="dedupe must be none or content"):
        check_config(dataclasses.replace(base, dedupe="pixels"))


@pytest.mark.slow
def test_dedupe_through_the_cli_on_ray(ray_local, tmp_path, tiny_ckpt):
    """The driver's Claims actor serves every finish task of the run. What is guaranteed: a copy names an input
    that wrote those bytes (never an output that is not there), and copies in one batch are written once; copies
    in two finish tasks at the same moment may both be written (docs/colorizing.md). verify passes."""
    from support import encoded, noise
    from typer.testing import CliRunner

    from raycolor.cli import app

    src = tmp_path / "in"
    (src / "copies").mkdir(parents=True)
    for k in range(6):
        (src / f"p{k}.png").write_bytes(encoded(noise(24, 20, k), "PNG"))
    for k in range(3):  # c0 and c1: copies of p0; c2 of p1
        (src / "copies" / f"c{k}.png").write_bytes((src / f"p{0 if k < 2 else 1}.png").read_bytes())
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["colorize", str(src), "--output", str(out), "--checkpoint", tiny_ckpt,
                                 "--dedupe", "content", "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert len(rows) == 9 and {x["status"] for x in rows} == {"ok"}
    by_source = {x["source"]: x for x in rows}
    copies = [x for x in rows if x["duplicate_of"]]
    for x in copies:
        first = by_source[x["duplicate_of"]]
        assert first["duplicate_of"] is None and first["source_sha256"] == x["source_sha256"]
        assert (x["output"], x["outputs"]) == (first["output"], first["outputs"]) and Path(x["output"]).is_file()
    # the actor found copies across finish tasks (c2 of p1, c0 and c1 of p0 in the run seen here)
    assert copies, [(x["source"], x["duplicate_of"]) for x in rows]
    assert len([p for p in (out / "images").rglob("*") if p.is_file()]) == 9 - len(copies)
    v = CliRunner().invoke(app, ["verify", str(out)])
    assert v.exit_code == 0, v.output
