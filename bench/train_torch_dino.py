#!/usr/bin/env python3
"""The PyTorch peer of `tessera train --synthetic --config dino_vit_small`: DINO (Caron et al.
2021) with a ViT-S/16 on random multi-crop batches of the same shape (2 x 224 global +
10 x 96 local per image), timed per optimiser step. Prints one JSON line (steps/s, images/s:
median of the timed steps; an image is one sample, i.e. its twelve crops), as
bench/train_cpu_torch.py does for MAE.

Written out from facebookresearch/dino (vision_transformer.py, main_dino.py; no timm; the
blocks are bench/train_cpu_torch.py's, so the script runs from bench/ beside it): the
student runs the globals and the locals as two forward passes (one per resolution, position
embeddings interpolated bicubically for 96 px), the teacher the globals alone; DINO head
384 -> 2048 -> 2048 -> 256, L2 norm, weight-normalised last layer 256 -> 65536; centred and
sharpened teacher targets; AdamW; gradients clipped per parameter to 3.0; teacher EMA 0.996;
drop path 0.1 in the student."""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from train_cpu_torch import Block  # the MAE peer's timm ViT block, with drop path


class ViT(nn.Module):
    def __init__(self, img=224, patch=16, dim=384, depth=12, heads=6, drop_path_rate=0.0):
        super().__init__()
        self.patch, self.grid = patch, img // patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid * self.grid + 1, dim) * 0.02)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList(Block(dim, heads, 4.0, r) for r in dpr)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def pos(self, grid):
        if grid == self.grid:
            return self.pos_embed
        cls, patches = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = patches.shape[-1]
        patches = patches.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
        return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, d)], 1)

    def forward(self, x):
        grid = x.shape[-1] // self.patch
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos(grid)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


class Head(nn.Module):
    def __init__(self, dim, out, hidden=2048, bottleneck=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1)
        self.last_layer.parametrizations.weight.original0.requires_grad = False

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class Net(nn.Module):
    def __init__(self, out, drop_path_rate):
        super().__init__()
        self.backbone = ViT(drop_path_rate=drop_path_rate)
        self.head = Head(384, out)

    def forward(self, crops):
        # main_dino.py MultiCropWrapper: one backbone pass per resolution, one head pass.
        feats = [self.backbone(torch.cat(group)) for group in crops]
        return self.head(torch.cat(feats))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--locals", type=int, default=10)
    ap.add_argument("--out-dim", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--bf16", action="store_true", help="autocast to bf16 (GPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    student = Net(args.out_dim, 0.1).to(dev)
    teacher = Net(args.out_dim, 0.0).to(dev)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.04}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=5e-4 * args.batch / 256)
    center = torch.zeros(1, args.out_dim, device=dev)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    n_crops = 2 + args.locals
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        # The same work tessera's feeder does: u8 NHWC -> normalised f32 NCHW, per crop.
        def crop(size):
            u8 = torch.randint(0, 256, (args.batch, size, size, 3), dtype=torch.uint8, device=dev)
            return (u8.permute(0, 3, 1, 2).float() / 255 - mean) / std
        globals_ = [crop(224) for _ in range(2)]
        locals_ = [crop(96) for _ in range(args.locals)]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            s_out = student([globals_, locals_]).float() / 0.1
            with torch.no_grad():
                t_out = teacher([globals_]).float()
        t_soft = F.softmax((t_out - center) / 0.04, dim=-1).chunk(2)
        s_chunks = s_out.chunk(n_crops)
        loss, terms = 0.0, 0
        for iq, q in enumerate(t_soft):
            for v in range(n_crops):
                if v == iq:
                    continue
                loss = loss + torch.sum(-q * F.log_softmax(s_chunks[v], dim=-1), dim=-1).mean()
                terms += 1
        loss = loss / terms
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in params:  # main_dino.py clip_gradients: per parameter
            norm = p.grad.data.norm(2)
            p.grad.data.mul_(torch.clamp(3.0 / (norm + 1e-6), max=1.0))
        opt.step()
        with torch.no_grad():
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.data.mul_(0.996).add_(ps.detach().data, alpha=0.004)
            center.mul_(0.9).add_(t_out.mean(0, keepdim=True), alpha=0.1)
        loss_value = loss.item()  # host sync, as tessera's non-finite check
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"framework": "pytorch " + torch.__version__, "preset": "dino_vit_small", "batch": args.batch,
                      "bf16": args.bf16, "steps_per_second": 1 / med, "images_per_second": args.batch / med,
                      "last_loss": loss_value}))


if __name__ == "__main__":
    main()
