#!/usr/bin/env python3
"""Benchmark shards for the pipeline: ImageNet-like JPEGs (random crops of the shared
photos, resized to about 500x375, re-encoded at quality 90) in WebDataset tar shards.

usage: make_pipeline_shards.py OUT_DIR [--samples 512] [--shards 4] [--seed 0]
Writes OUT_DIR/bench-00000{0..}.tar, each sample `NNNNNN.jpg` + `NNNNNN.cls`.
"""
import argparse
import io
import pathlib
import random
import tarfile

from PIL import Image

PHOTOS = pathlib.Path(__file__).resolve().parent.parent.parent / "shared/testdata/photos"


def member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.iterdir()) if p.suffix in (".png", ".jpg")]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_shard = (args.samples + args.shards - 1) // args.shards
    for s in range(args.shards):
        path = out / f"bench-{s:06d}.tar"
        tmp = path.with_suffix(".tar.tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(s * per_shard, min(args.samples, (s + 1) * per_shard)):
                cls = rng.randrange(len(photos))
                img = photos[cls]
                w, h = img.size
                cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
                x, y = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
                crop = img.crop((x, y, x + cw, y + ch))
                landscape = rng.random() < 0.75
                crop = crop.resize((500, 375) if landscape else (375, 500), Image.BICUBIC)
                buf = io.BytesIO()
                crop.save(buf, "JPEG", quality=90)
                member(tar, f"{i:06d}.jpg", buf.getvalue())
                member(tar, f"{i:06d}.cls", str(cls).encode())
        tmp.rename(path)
    print(f"wrote {args.samples} samples in {args.shards} shards to {out}")


if __name__ == "__main__":
    main()
