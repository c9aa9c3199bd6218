#!/usr/bin/env python3
"""The Pillow peer of `tessera profile`: webdataset + Pillow in worker processes, the way
the official DINO code augments (torchvision's transforms on PIL images), without torch.

Each of `--workers` processes reads its share of the shards with `webdataset`, decodes
with Pillow (libjpeg-turbo), applies the recipe with Pillow operations, stacks the views
of `--batch-size` samples into uint8 arrays and sends the batch to the parent over a
bounded queue (the shape of a DataLoader with worker processes). The parent counts
images per second of wall time, and reports the CPU time of all processes per image.

Recipes (the same as bench/pipeline_peer.py and Tessera's `dino`, `mae`):
- `dino`: DataAugmentationDINO (main_dino.py): 2 global crops 224 scale (0.4, 1), 10 local
  crops 96 scale (0.05, 0.4), bicubic; flip p 0.5; ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8
  in random order (torchvision's PIL path: ImageEnhance, HSV hue shift); grey p 0.2;
  PIL GaussianBlur(radius U[0.1, 2]) p 1.0 / 0.1 / 0.5; solarize p 0.2 on global 2.
- `mae`: RandomResizedCrop 224 scale (0.2, 1) bicubic, flip.
- `decode`: `Image.open(...).convert("RGB")` and nothing else: Pillow's decode-only rate.

usage: pipeline_pillow.py --recipe dino|mae|decode --shards 'dir/bench-{000000..000003}.tar'
       [--workers 2] [--batch-size 32] [--seconds 20] [--json]
"""
import argparse
import io
import json
import math
import multiprocessing as mp
import os
import queue
import random
import time

import numpy as np
import webdataset as wds
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

BICUBIC = Image.Resampling.BICUBIC


def rrc_params(w, h, scale, ratio=(3 / 4, 4 / 3)):
    """torchvision RandomResizedCrop.get_params, with Python's random."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return random.randint(0, h - ch), random.randint(0, w - cw), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        cw, ch = int(round(h * ratio[1])), h
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def resized_crop(img, size, scale):
    """torchvision F.resized_crop on a PIL image: crop, then resize (bicubic)."""
    i, j, h, w = rrc_params(*img.size, scale)
    return img.crop((j, i, j + w, i + h)).resize((size, size), BICUBIC)


def adjust_hue(img, factor):
    """torchvision's PIL adjust_hue: shift the H channel of HSV as uint8."""
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    np_h += np.uint8(int(factor * 255) % 256)
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB")


def color_jitter(img, b=0.4, c=0.4, s=0.2, hue=0.1):
    """torchvision ColorJitter on PIL: four factors, steps in random order."""
    steps = [0, 1, 2, 3]
    random.shuffle(steps)
    fb, fc, fs = random.uniform(1 - b, 1 + b), random.uniform(1 - c, 1 + c), random.uniform(1 - s, 1 + s)
    fh = random.uniform(-hue, hue)
    for step in steps:
        if step == 0:
            img = ImageEnhance.Brightness(img).enhance(fb)
        elif step == 1:
            img = ImageEnhance.Contrast(img).enhance(fc)
        elif step == 2:
            img = ImageEnhance.Color(img).enhance(fs)
        else:
            img = adjust_hue(img, fh)
    return img


def flip_jitter_grey(img):
    if random.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if random.random() < 0.8:
        img = color_jitter(img)
    if random.random() < 0.2:
        img = img.convert("L").convert("RGB")
    return img


def blur(img, p):
    if random.random() < p:
        img = img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
    return img


def dino(img):
    g1 = blur(flip_jitter_grey(resized_crop(img, 224, (0.4, 1.0))), 1.0)
    g2 = blur(flip_jitter_grey(resized_crop(img, 224, (0.4, 1.0))), 0.1)
    if random.random() < 0.2:
        g2 = ImageOps.solarize(g2, 128)
    locals_ = [blur(flip_jitter_grey(resized_crop(img, 96, (0.05, 0.4))), 0.5) for _ in range(10)]
    return [g1, g2] + locals_


def mae(img):
    view = resized_crop(img, 224, (0.2, 1.0))
    if random.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return [view]


def worker(rank, args, shards, out):
    random.seed(rank)
    transform = {"dino": dino, "mae": mae}.get(args.recipe)
    dataset = wds.WebDataset(shards, shardshuffle=False, empty_check=False).repeat().shuffle(args.shuffle)
    views, labels = [], []
    for sample in dataset:
        img = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
        labels.append(int(sample.get("cls", b"-1")))
        if transform is not None:
            views.append([np.asarray(v) for v in transform(img)])
        if len(labels) == args.batch_size:
            batch = [np.stack(v) for v in zip(*views)] if views else []
            out.put((batch, labels))
            views, labels = [], []


def cpu_seconds():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", choices=["dino", "mae", "decode"], required=True)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shuffle", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    urls = list(wds.shardlists.expand_urls(args.shards))
    out = mp.Queue(maxsize=2 * args.workers)
    procs = [mp.Process(target=worker, args=(r, args, urls[r::args.workers], out), daemon=True)
             for r in range(args.workers)]
    cpu0 = cpu_seconds()
    for p in procs:
        p.start()
    images = 0
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        try:
            _, labels = out.get(timeout=60)
        except queue.Empty:
            break
        images += len(labels)
    seconds = time.perf_counter() - started
    # Workers' CPU time is only known once they are reaped.
    for p in procs:
        p.terminate()
    for p in procs:
        p.join()
    cpu = cpu_seconds() - cpu0
    result = {"peer": "webdataset + Pillow worker processes", "recipe": args.recipe,
              "workers": args.workers, "images": images, "seconds": seconds,
              "images_per_second": images / seconds,
              "cpu_ms_per_image": 1000 * cpu / max(images, 1)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.recipe}: {images / seconds:.1f} images/s ({images} in {seconds:.1f} s), "
              f"{result['cpu_ms_per_image']:.2f} ms CPU per image")


if __name__ == "__main__":
    main()
