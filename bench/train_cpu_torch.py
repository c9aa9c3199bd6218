#!/usr/bin/env python3
"""The PyTorch peer of `tessera train --synthetic`: the same MAE (timm-style ViT blocks,
sin-cos position tables, MAE decoder, norm_pix_loss, AdamW) on random batches of the same
shape, timed per optimiser step. Prints one JSON line: steps/s and images/s (median of the
timed steps), so bench/train_cpu.sh can compare it with tessera on the same threads.

Model: facebookresearch/mae models_mae.py, written out (no timm dependency)."""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def sincos_2d(dim, grid, cls=True):
    # MAE util/pos_embed.py get_2d_sincos_pos_embed
    def one(d, pos):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], 1)

    gh, gw = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="xy")
    emb = torch.cat([one(dim // 2, gw), one(dim // 2, gh)], 1)
    if cls:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb], 0)
    return emb.float()[None]


def drop_path(x, p, training):
    """Stochastic depth per sample (timm's DropPath); the identity at p = 0 (MAE)."""
    if p == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Block(nn.Module):
    """timm's ViT block (pre-norm attention and MLP), `dpr` its drop-path rate."""

    def __init__(self, dim, heads, mlp_ratio, dpr=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.heads, self.dpr = heads, dpr

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + drop_path(self.proj(a.transpose(1, 2).reshape(b, n, d)), self.dpr, self.training)
        return x + drop_path(self.fc2(F.gelu(self.fc1(self.norm2(x)))), self.dpr, self.training)


class MAE(nn.Module):
    def __init__(self, img, patch, dim, depth, heads, ddim, ddepth, dheads, mlp_ratio=4.0):
        super().__init__()
        self.patch, self.grid = patch, img // patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d(dim, self.grid))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.register_buffer("decoder_pos_embed", sincos_2d(ddim, self.grid))
        self.decoder_blocks = nn.ModuleList(Block(ddim, dheads, mlp_ratio) for _ in range(ddepth))
        self.decoder_norm = nn.LayerNorm(ddim, eps=1e-6)
        self.decoder_pred = nn.Linear(ddim, patch * patch * 3)

    def patchify(self, imgs):
        p, h = self.patch, self.grid
        x = imgs.reshape(imgs.shape[0], 3, h, p, h, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(imgs.shape[0], h * h, p * p * 3)

    def forward(self, imgs, ids_keep, ids_restore, mask):
        x = self.patch_embed(imgs).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        d = x.shape[-1]
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, d))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        n, l = ids_restore.shape
        mt = self.mask_token.expand(n, l + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], mt], 1)
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], 1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        target = self.patchify(imgs)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum()


PRESETS = {
    # name: img, patch, dim, depth, heads, decoder dim, depth, heads
    "tiny_cifar": (32, 4, 192, 12, 3, 128, 2, 4),
    "mae_vit_tiny_cifar": (32, 4, 192, 6, 3, 128, 2, 4),  # configs/mae_vit_tiny_cifar.toml
    "demo": (32, 4, 96, 4, 3, 64, 1, 2),
    "vit_tiny_224": (224, 16, 192, 12, 3, 512, 8, 16),
    "vit_base_224": (224, 16, 768, 12, 12, 512, 8, 16),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny_cifar", choices=PRESETS)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="autocast to bf16 (GPU)")
    ap.add_argument("--profile", action="store_true",
                    help="torch.profiler over the timed steps; the ops' table goes to stderr")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    img, patch, *shape = PRESETS[args.preset]
    dev = torch.device(args.device)
    model = MAE(img, patch, *shape).to(dev)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "token" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "token" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1.5e-4, betas=(0.9, 0.95))
    l = (img // patch) ** 2
    keep = int(l * (1 - args.mask_ratio))
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    times = []
    profiler = None
    for step in range(args.warmup + args.steps):
        if args.profile and step == args.warmup:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            profiler.start()
        t0 = time.perf_counter()
        # The same work tessera's feeder does: u8 NHWC -> normalised f32 NCHW, masks.
        u8 = torch.randint(0, 256, (args.batch, img, img, 3), dtype=torch.uint8, device=dev)
        imgs = (u8.permute(0, 3, 1, 2).float() / 255 - mean) / std
        noise = torch.rand(args.batch, l, device=dev)
        ids_shuffle = noise.argsort(1)
        ids_restore = ids_shuffle.argsort(1)
        ids_keep = ids_shuffle[:, :keep]
        mask = torch.ones(args.batch, l, device=dev)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(imgs, ids_keep, ids_restore, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.item()  # host sync, as tessera's non-finite check
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    if profiler is not None:
        profiler.stop()
        # Self time per op over all timed steps (divide by --steps for a step's share).
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20), file=sys.stderr)
    med = statistics.median(times)
    print(json.dumps({"framework": "pytorch " + torch.__version__, "preset": args.preset, "batch": args.batch,
                      "threads": args.threads, "steps_per_second": 1 / med, "images_per_second": args.batch / med,
                      "last_loss": loss_value}))


if __name__ == "__main__":
    main()
