#!/usr/bin/env python3
"""The PyTorch peer of `tessera train --synthetic --config simclr_resnet18_cifar`: SimCLR
(Chen et al. 2020) on a CIFAR ResNet-18, on random two-view batches of the same shape,
timed per optimiser step. Prints one JSON line (steps/s, images/s: median of the timed
steps; an image is one sample, i.e. two views), as bench/train_cpu_torch.py does for MAE.

Model, as tessera's recipe builds it: torchvision's resnet18 with the CIFAR stem (conv1 3x3
stride 1, no max-pool; `fc` removed: 512 features), zero-init of each block's last BN gamma,
the SimCLR projector 512 -> 2048 -> 128 (ReLU, biases, no BN), NT-Xent at temperature 0.5
over the 2N embeddings, LARS (momentum 0.9, eta 0.02, weight decay 1e-5; BN and biases
excluded from adaptation and decay, as solo-learn). Both views go through the network as one
batch of 2N, as tessera's two-view methods do."""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


def resnet18_cifar():
    net = torchvision.models.resnet18(num_classes=10, zero_init_residual=True)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


class SimCLR(nn.Module):
    def __init__(self, hidden=2048, out=128, temperature=0.5):
        super().__init__()
        self.backbone = resnet18_cifar()
        self.projector = nn.Sequential(nn.Linear(512, hidden), nn.ReLU(), nn.Linear(hidden, out))
        self.t = temperature

    def forward(self, v1, v2):
        z = F.normalize(self.projector(self.backbone(torch.cat([v1, v2]))), dim=1)
        n = v1.shape[0]
        sim = z @ z.t() / self.t
        sim.fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(sim, target)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and the LARS trust ratio (You et al. 2017), solo-learn's variant:
    1-d parameters (BN, biases) are neither adapted nor decayed."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=1e-5, eta=0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=g["weight_decay"])
                    pn, dn = torch.norm(p), torch.norm(d)
                    q = torch.where((pn > 0) & (dn > 0), g["eta"] * pn / dn, torch.ones_like(pn))
                    d = d.mul(q)
                buf = self.state[p].get("mu")
                if buf is None:
                    buf = self.state[p]["mu"] = torch.clone(d)
                else:
                    buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SimCLR()
    opt = LARS(model.parameters(), lr=0.4 * args.batch / 256)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        # The same work tessera's feeder does: u8 NHWC -> normalised f32 NCHW, per view.
        views = []
        for _ in range(2):
            u8 = torch.randint(0, 256, (args.batch, 32, 32, 3), dtype=torch.uint8)
            views.append((u8.permute(0, 3, 1, 2).float() / 255 - mean) / std)
        loss = model(*views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.item()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"framework": "pytorch " + torch.__version__, "preset": "simclr_resnet18_cifar",
                      "batch": args.batch, "threads": args.threads, "steps_per_second": 1 / med,
                      "images_per_second": args.batch / med, "last_loss": loss_value}))


if __name__ == "__main__":
    main()
