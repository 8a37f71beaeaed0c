"""How a colorize OUTPUT holds its images, one writer per layout (``--layout``), in the spirit of img2dataset's
sample writers: pure fsspec/pyarrow, no Ray.

Two stages of the pipeline touch the images: the finish stage, which encodes each image and spools its row,
and the shard's merge, which joins the spooled rows into the shard's manifest part. Every writer says what its
layout does at each:

* ``spools_images``: whether the images travel in the spool (their rows' ``image`` column) to the merge,
  which writes them; a writer that does not spool them writes them at the finish stage (``write_images``,
  which only such a writer has);
* ``row_output(output, key)``: the ``output`` a finished row carries into the spool, and
  ``derivative_output(output, name, key)`` the ``uri`` of its derivative ``name`` in the row's ``outputs``;
* ``merge(table, ...)``: a shard's de-duplicated rows -> the rows its part holds, its images written.

:data:`WRITERS` holds one per layout; the paths they write are :mod:`raycolor.outputs.ledger`'s.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence

import pyarrow as pa

from raycolor import storage
from raycolor.config import StorageConfig
from raycolor import paths
from raycolor.outputs.ledger import DERIVATIVE_IMAGES_COLUMN, IMAGE_COLUMN


class FilesWriter:
    """Layout "files": one image file per ok row, OUTPUT/images/<key>, and one per derivative,
    OUTPUT/derivatives/<name>/<key>, written by the finish stage."""

    layout = "files"
    spools_images = False  # the spool carries them only with --parquet-images

    def row_output(self, output: str, key: str) -> str:
        return paths.image_uri(output, key)

    def derivative_output(self, output: str, name: str, key: str) -> str:
        return paths.derivative_uri(output, name, key)

    def write_images(self, images: Sequence[tuple[str, bytes]], shards: Sequence[str], *, output: str,
                     store: StorageConfig) -> list[Exception | None]:
        """Write each (uri, data) of the finish stage, the one in ``shards`` at the same index being its shard's
        id; each write's error after its retries, or None."""
        # the writes in flight together (each still atomic). A local write's temp file goes in its shard's spool
        # folder: one cut off by a stop or a crash goes with the spool when the shard is merged, never left
        # beside the images
        return storage.write_many(
            images,
            store=store,
            tmp_dirs=[paths.spool_dir(output, sid) for sid in shards],
        )

    def merge(self, table: pa.Table, *, output: str, sid: str, retried: bool, parquet_images: bool,
              store: StorageConfig) -> pa.Table:
        """The images were written by the finish stage: the part holds the rows as they are."""
        return table


class WebDatasetWriter:
    """Layout "webdataset": the shard's images in one tar, OUTPUT/shards/<shard id>.tar, holding key.<ext> +
    key.json per ok row (and key.<derivative name>.<ext> per derivative, e.g. key.jpeg-3000.jpg: one sample,
    one more field), written by the shard's merge from the images its spool carries."""

    layout = "webdataset"
    spools_images = True

    def row_output(self, output: str, key: str) -> str:
        """The output key: the merge turns it into `<tar uri>#<member>`."""
        return key

    def derivative_output(self, output: str, name: str, key: str) -> str:
        """The derivative's output key (its own extension): the merge turns it into `<tar uri>#<member>`."""
        return key

    def merge(self, table: pa.Table, *, output: str, sid: str, retried: bool, parquet_images: bool,
              store: StorageConfig) -> pa.Table:
        """The shard's tar, written before its part; a retried shard's tar keeps the members of its rows that
        were not retried."""
        if retried:
            table = self._with_old_members(table, output=output, sid=sid, store=store)
        return self._write_tar(table, output=output, sid=sid, parquet_images=parquet_images, store=store)

    def _write_tar(self, table: pa.Table, *, output: str, sid: str, parquet_images: bool,
                   store: StorageConfig) -> pa.Table:
        """One tar holding key.<ext> + key.json per ok row, written with one PUT (atomic rename locally); rows'
        `output` becomes `<tar uri>#<key>.<ext>`."""
        tar_uri = paths.shard_tar_uri(output, sid)
        buf = io.BytesIO()
        outputs = table.column("output").to_pylist()
        blobs = table.column("image").to_pylist()
        member_cols = ("source", "status", "width", "height", "model_id", "format", "bit_depth")
        cols = {c: table.column(c).to_pylist() for c in (*member_cols, "metadata")}
        # every output of each row (master first; null in a part written before derivatives) and the derivatives' bytes
        listed = table.column("outputs").to_pylist() if "outputs" in table.column_names else [None] * len(outputs)
        extra = (table.column(DERIVATIVE_IMAGES_COLUMN.name).to_pylist()
                 if DERIVATIVE_IMAGES_COLUMN.name in table.column_names else [None] * len(outputs))
        taken: set[str] = set()
        new_outputs: list[str | None] = []
        new_listed: list[list | None] = []
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for i, out in enumerate(outputs):
                if cols["status"][i] != "ok" or out is None or blobs[i] is None:
                    new_outputs.append(None)
                    new_listed.append(listed[i])
                    continue
                key = paths.wds_key(out)
                if key.lower() in taken:  # two output keys that differ only by their dots: keep both
                    key = paths.disambiguated(key, cols['source'][i])
                taken.add(key.lower())
                ext = out.rsplit(".", 1)[-1]
                meta = {k: cols[k][i] for k in member_cols}
                meta["metadata"] = json.loads(cols["metadata"][i]) if cols["metadata"][i] else None
                members = [(f"{key}.{ext}", blobs[i]), (f"{key}.json", json.dumps(meta).encode())]
                entries = [dict(e) for e in listed[i]] if listed[i] else None
                if entries:  # the master, then each derivative as a field of the same sample: key.<name>.<ext>
                    entries[0]["uri"] = f"{tar_uri}#{key}.{ext}"
                    for e, data in zip(entries[1:], extra[i] or []):
                        e["uri"] = f"{tar_uri}#{key}.{e['name']}.{e['uri'].rsplit('.', 1)[-1]}"
                        members.append((e["uri"].split("#", 1)[1], data))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(data), 0
                    tf.addfile(info, io.BytesIO(data))
                new_outputs.append(f"{tar_uri}#{key}.{ext}")
                new_listed.append(entries)
        storage.write_bytes_atomic(tar_uri, buf.getvalue(), store=store, tmp_dir=paths.spool_dir(output, sid))
        table = table.set_column(table.schema.get_field_index("output"), "output", pa.array(new_outputs, type=pa.string()))
        if "outputs" in table.column_names:
            field = table.schema.field("outputs")
            table = table.set_column(table.schema.get_field_index("outputs"), field, pa.array(new_listed, type=field.type))
        spooled = [c for c in (IMAGE_COLUMN.name, DERIVATIVE_IMAGES_COLUMN.name) if c in table.column_names]
        return table if parquet_images else table.drop_columns(spooled)

    def _with_old_members(self, table: pa.Table, *, output: str, sid: str, store: StorageConfig) -> pa.Table:
        """A retried shard: its rows kept from the earlier part point into the earlier tar (`<tar>#key.ext`);
        give them back their member's bytes and name, so the rebuilt tar holds the earlier images under the
        same keys next to the retried ones. One GET of the old tar; a tar that cannot be read fails the merge
        (the old rows would otherwise lose their images) and the run says so."""
        tar_uri = paths.shard_tar_uri(output, sid)
        outputs = table.column("output").to_pylist()
        if not any(o and o.startswith(tar_uri + "#") for o in outputs):
            return table
        fs, path = storage.filesystem(tar_uri, store=store)
        data = storage.retrying(lambda: fs.cat_file(path), store.retries)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
        # by name: a pa.Field is never `in` a list of column names, and table.column() takes no Field
        has_images = IMAGE_COLUMN.name in table.column_names
        images = table.column(IMAGE_COLUMN.name).to_pylist() if has_images else [None] * len(outputs)
        listed = table.column("outputs").to_pylist() if "outputs" in table.column_names else [None] * len(outputs)
        has_extra = DERIVATIVE_IMAGES_COLUMN.name in table.column_names
        extra = table.column(DERIVATIVE_IMAGES_COLUMN.name).to_pylist() if has_extra else [None] * len(outputs)

        def member(name: str) -> bytes:
            if name not in members:
                raise RuntimeError(f"{tar_uri} has no member {name}, which the shard's manifest part names: the tar was changed outside raycolor")
            return members[name]

        for i, out in enumerate(outputs):
            if out and out.startswith(tar_uri + "#"):
                name = out[len(tar_uri) + 1 :]
                outputs[i], images[i] = name, member(name)
                if listed[i] and len(listed[i]) > 1:  # its derivatives: fields of the same sample
                    extra[i] = [member(e["uri"].split("#", 1)[1]) for e in listed[i][1:]]
        table = table.set_column(table.schema.get_field_index("output"), "output", pa.array(outputs, type=pa.string()))
        if any(e is not None for e in extra):
            column = pa.array(extra, type=DERIVATIVE_IMAGES_COLUMN.type)
            table = (table.set_column(table.schema.get_field_index(DERIVATIVE_IMAGES_COLUMN.name), DERIVATIVE_IMAGES_COLUMN, column)
                     if has_extra else table.append_column(DERIVATIVE_IMAGES_COLUMN, column))
        image = pa.array(images, type=pa.binary())
        if has_images:
            return table.set_column(table.schema.get_field_index(IMAGE_COLUMN.name), IMAGE_COLUMN, image)
        return table.append_column(IMAGE_COLUMN, image)


# the writer of each --layout (ColorizeConfig.layout); its keys are the layouts check_config accepts
WRITERS: dict[str, FilesWriter | WebDatasetWriter] = {"files": FilesWriter(), "webdataset": WebDatasetWriter()}
