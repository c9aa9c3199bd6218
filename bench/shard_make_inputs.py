#!/usr/bin/env python3
"""Make the `tessera shard` benchmark input set: N distinct JPEGs of realistic size.

Random crops (seeded) of the real photos in shared/testdata/photos, scaled so the longer
side is 400-640 px, re-encoded by Pillow at quality 85-95, written as
OUT/<class>/<n>.jpg over 10 class folders. Same seed, same files.

Usage: shard_make_inputs.py OUT [N=2000]
"""
import io
import pathlib
import random
import sys

from PIL import Image

PHOTOS = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "photos"


def main(out, n):
    rng = random.Random(0)
    sources = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.*")) if p.suffix in (".png", ".jpg")]
    out = pathlib.Path(out)
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = src.crop((x, y, x + cw, y + ch))
        side = rng.randint(400, 640)
        scale = side / max(cw, ch)
        crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BICUBIC)
        path = out / f"class{i % 10}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=rng.randint(85, 95))
        path.write_bytes(buf.getvalue())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000)
