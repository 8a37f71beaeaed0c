"""CPU per image spent outside the model actor, 640x480 JPEG -> JPEG, device codec on and off.

The budget (issue 11): a 16-core GPU node at 4,000 images/s leaves 16 / 4,000 = 4 ms of CPU per image for
everything outside the GPU. The CPU work outside the actor is the decode stage (`decode_batch`: read the
file, and without the device codec decode + prepare L) and the finish stage (`finish_batch`: without the
device codec encode the RGB the actor composed; then write the file and the manifest rows). Both run here
single-threaded on one batch, CPU time (`thread_time`), best of 3, exactly as the pipeline calls them with
`--gpus N` (stage.gpus > 0: the actor composes full-res RGB) and `--device-codec off|on`. The actor's own
step runs on --device (cuda on a GPU node; cpu here, where it is only there to hand the finish stage what
the actor hands it). Ray's own per-image cost (moving blocks between processes) is not included.

Inputs come twice: bare, and tagged as an archive's are (EXIF with text/date/GPS tags, IPTC-IIM, a ~3 KB XMP
packet, 600 dpi; written with exiftool when it is installed, else EXIF + XMP by Pillow), so the cost of
carrying metadata (issue 21: <= 0.5 ms a image) is the difference of two lines measured in one run.

    .venv/bin/python bench/outside_actor.py                      # this machine
    .venv/bin/python bench/outside_actor.py --device cuda        # a GPU node: the same CPU functions
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from colorize_throughput import synthetic_image  # the same photo-like 640x480 inputs

XMP = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
    'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/">'
    '<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{caption}</rdf:li></rdf:Alt></dc:description>'
    '<dc:creator><rdf:Seq><rdf:li>Jane Doe</rdf:li></rdf:Seq></dc:creator>'
    '<dc:rights><rdf:Alt><rdf:li xml:lang="x-default">(c) 1950 City Archive</rdf:li></rdf:Alt></dc:rights>'
    '<photoshop:Credit>City Archive</photoshop:Credit></rdf:Description></rdf:RDF></x:xmpmeta>'
    + " " * 2048 + '<?xpacket end="w"?>'
)


def tag_like_an_archive(paths: list[Path]) -> str:
    """Give the files an archive's metadata; returns how."""
    caption = "Harbour at dawn, fishing boats returning; glass negative, 1950"
    exiftool = shutil.which("exiftool")
    if exiftool:
        subprocess.run([exiftool, "-q", "-q", "-overwrite_original", f"-EXIF:ImageDescription={caption}",
                        "-EXIF:Artist=Jane Doe", "-EXIF:Copyright=(c) 1950 City Archive",
                        "-EXIF:DateTimeOriginal=1950:06:01 05:30:00", "-GPSLatitude=48.85", "-GPSLatitudeRef=N",
                        "-GPSLongitude=2.35", "-GPSLongitudeRef=E", "-Make=Linhof", "-Model=Technika",
                        f"-IPTC:Caption-Abstract={caption}", "-IPTC:By-line=Jane Doe",
                        "-IPTC:CopyrightNotice=(c) 1950 City Archive", f"-XMP-dc:Description={caption}",
                        "-XMP-dc:Creator=Jane Doe", "-XResolution=600", "-YResolution=600",
                        "-ResolutionUnit=inches", *map(str, paths)], check=True)
        return "EXIF + IPTC + XMP + 600 dpi (exiftool)"
    from PIL import Image

    for p in paths:
        with Image.open(p) as im:
            im.load()
            exif = Image.Exif()
            exif.update({0x010E: caption, 0x013B: "Jane Doe", 0x8298: "(c) 1950 City Archive"})
            im.save(p, quality=90, exif=exif.tobytes(), xmp=XMP.format(caption=caption).encode(), dpi=(600, 600))
    return "EXIF + XMP + 600 dpi (Pillow; no exiftool for IPTC)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16, help="images in the batch")
    ap.add_argument("--render-size", type=int, default=224)
    ap.add_argument("--jpeg-quality", type=int, default=92)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from raycolor import inputs
    from raycolor.config import ColorizeConfig, StorageConfig
    from raycolor.core import checkpoint
    from raycolor.core.model import build_colorizer
    from raycolor.pipelines import stages

    torch.set_num_threads(1)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="outside-actor-") as tmp:
        for kind in ("bare", "tagged"):
            src = Path(tmp) / kind
            src.mkdir()
            for i in range(args.images):
                Image.fromarray(synthetic_image(i)).save(src / f"{i:04d}.jpg", quality=90)
        how = tag_like_an_archive(sorted((Path(tmp) / "tagged").glob("*.jpg")))
        print(f"inputs: {args.images} 640x480 JPEGs, bare and tagged with {how}", flush=True)
        ckpt = str(Path(tmp) / "model")
        torch.manual_seed(0)
        checkpoint.save(ckpt, build_colorizer(weights=None), render_size=args.render_size)
        model, _ = checkpoint.load(ckpt)
        device = torch.device(args.device)
        model = model.to(device)
        storage = StorageConfig(retries=1)
        config = ColorizeConfig(inputs=(), output="", checkpoint=ckpt, format="jpeg", jpeg_quality=args.jpeg_quality,
                                storage=storage)
        cases = [(f"{kind} inputs, device codec {'on' if codec else 'off'}", kind, codec)
                 for codec in (False, True) for kind in ("bare", "tagged")]
        for name, kind, codec in cases:
            rows = [dataclasses.asdict(i) for i in inputs.list_items([str(Path(tmp) / kind)])]
            batch = {k: np.array([r[k] for r in rows], dtype=object if isinstance(rows[0][k], str) else np.int64)
                     for k in rows[0]}
            n = len(rows)
            batch.update(shard=np.array(["bench"] * n, dtype=object), shard_n=np.full(n, n),
                         error=np.full(n, "", dtype=object))
            stage = stages.ModelStage(checkpoint=ckpt, render_size=args.render_size, batch_size=n, gpus=1, storage=storage,
                                  device_codec=codec, encode_jpeg_quality=args.jpeg_quality if codec else None)
            actor = stages.Predictor.with_model(model, device, stage)
            dec, fin = [], []
            for _ in range(5):  # the first round pays imports and first writes; keep the best
                c0 = time.thread_time()
                decoded = stages.decode_batch(batch, stage=stage)
                dec.append(time.thread_time() - c0)
                predicted = actor(decoded)
                with tempfile.TemporaryDirectory(dir=tmp) as out:
                    c0 = time.thread_time()
                    stages.finish_batch(predicted, config=config, stage=stage, output=out, model_id="bench")
                    fin.append(time.thread_time() - c0)
            d, f = min(dec) / n * 1e3, min(fin) / n * 1e3
            figures[name] = {"decode_stage_cpu_ms": round(d, 2), "finish_stage_cpu_ms": round(f, 2),
                             "outside_actor_cpu_ms": round(d + f, 2), "images_per_s_per_16_cores": round(16_000 / (d + f))}
            print(f"{name}: decode stage {d:.2f} + finish stage {f:.2f} = {d + f:.2f} CPU ms/image outside the actor "
                  f"(budget 4 ms at 4,000 images/s on 16 cores; 16 cores feed {16_000 / (d + f):,.0f} images/s)", flush=True)
    for codec in ("off", "on"):
        bare, tagged = (figures[f"{k} inputs, device codec {codec}"]["outside_actor_cpu_ms"] for k in ("bare", "tagged"))
        figures[f"metadata cost, device codec {codec}"] = round(tagged - bare, 2)
        print(f"device codec {codec}: carrying the tagged inputs' metadata costs {tagged - bare:+.2f} CPU ms/image "
              "(target <= 0.5)", flush=True)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
