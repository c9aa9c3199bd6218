#!/usr/bin/env python3
"""The peer of `tessera profile`: PyTorch DataLoader + webdataset + torchvision v2 doing the
same recipe on the same shards with the same number of workers; prints images/s.

Recipes follow the official code: `dino` = DataAugmentationDINO (main_dino.py: 2 global
crops 224 scale (0.4, 1), 10 local crops 96 scale (0.05, 0.4), flip, colour jitter p 0.8,
greyscale p 0.2, blur p 1.0 / 0.1 / 0.5, solarize p 0.2 on the second global view);
`mae` = main_pretrain.py (RandomResizedCrop 224 scale (0.2, 1), flip) plus MAE's random
mask (75 %) per sample. Outputs stay uint8 like Tessera's batches (normalisation belongs
on the device in both). Images are decoded with torchvision.io.decode_image (libjpeg-turbo),
the fastest decoder torchvision has on CPU.

usage: pipeline_peer.py --recipe dino|mae --shards 'dir/bench-{000000..000003}.tar'
       [--workers 2] [--batch-size 64] [--seconds 20] [--json]
"""
import argparse
import json
import time

import torch
import torchvision
import webdataset as wds
from torchvision.transforms import v2

BICUBIC = v2.InterpolationMode.BICUBIC


def dino_transform():
    flip_and_jitter = v2.Compose([
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ])

    def blur(p):
        return v2.RandomApply([v2.GaussianBlur(kernel_size=23, sigma=(0.1, 2.0))], p=p)

    global_1 = v2.Compose([v2.RandomResizedCrop(224, scale=(0.4, 1.0), interpolation=BICUBIC, antialias=True),
                           flip_and_jitter, blur(1.0)])
    global_2 = v2.Compose([v2.RandomResizedCrop(224, scale=(0.4, 1.0), interpolation=BICUBIC, antialias=True),
                           flip_and_jitter, blur(0.1), v2.RandomSolarize(threshold=128, p=0.2)])
    local = v2.Compose([v2.RandomResizedCrop(96, scale=(0.05, 0.4), interpolation=BICUBIC, antialias=True),
                        flip_and_jitter, blur(0.5)])

    def apply(img):
        return [global_1(img), global_2(img)] + [local(img) for _ in range(10)]

    return apply


def mae_transform():
    crop = v2.Compose([v2.RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=BICUBIC, antialias=True),
                       v2.RandomHorizontalFlip()])
    patches = (224 // 16) ** 2

    def apply(img):
        noise = torch.rand(patches)
        ids_shuffle = torch.argsort(noise)
        ids_restore = torch.argsort(ids_shuffle)
        mask = torch.ones(patches, dtype=torch.uint8)
        mask[ids_shuffle[: int(patches * 0.25)]] = 0
        return [crop(img), mask, ids_restore]

    return apply


def decode(sample):
    data = torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8)
    img = torchvision.io.decode_image(data, mode=torchvision.io.ImageReadMode.RGB)
    return img, int(sample.get("cls", b"-1"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", choices=["dino", "mae"], required=True)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shuffle", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    transform = dino_transform() if args.recipe == "dino" else mae_transform()

    def make(sample):
        img, label = decode(sample)
        return transform(img), label

    dataset = (
        wds.WebDataset(args.shards, shardshuffle=100, nodesplitter=wds.split_by_node,
                       workersplitter=wds.split_by_worker, empty_check=False)
        .repeat()
        .shuffle(args.shuffle)
        .map(make)
        .batched(args.batch_size, partial=False)
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=args.workers,
                                         persistent_workers=False, prefetch_factor=2)
    images = 0
    started = time.perf_counter()
    for views, labels in loader:
        images += len(labels)
        if time.perf_counter() - started >= args.seconds:
            break
    seconds = time.perf_counter() - started
    result = {"peer": "torch DataLoader + webdataset + torchvision v2", "recipe": args.recipe,
              "workers": args.workers, "images": images, "seconds": seconds,
              "images_per_second": images / seconds, "torch": torch.__version__,
              "torchvision": torchvision.__version__}
    print(json.dumps(result) if args.json else f"{args.recipe}: {images / seconds:.1f} images/s ({images} in {seconds:.1f} s)")


if __name__ == "__main__":
    main()
