"""One QAT training step of a converted model against the float model's step (issue 17, item 4).

A step is forward + cross-entropy + backward + Adam update at batch 256 (3 warm-up steps, then
the best and the median of 10 timed steps), on the digits CNN (8x8x1) and a ResNet-8 of MLPerf
Tiny's shape (32x32x3, 16/32/64 channels, three residual stages). The ratio quantized / float is
measured side by side in this one run (target: <= 3x).

    .venv/bin/python benchmarks/bench_train_step.py [--device cpu|cuda] [--formats int8,e4m3,e2m1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch
from torch import nn

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "examples")]
warnings.filterwarnings("ignore")

import fpq  # noqa: E402
from digits_cnn import DigitsCNN  # noqa: E402


class _Stage(nn.Module):
    """A ResNet-8 stage: conv-bn-relu-conv-bn plus the (1x1, strided when downsampling) skip."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + self.skip(x))


class ResNet8(nn.Module):
    """MLPerf Tiny image classification's ResNet-8 (CIFAR-10): the timing model of issue 17."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.stages = nn.Sequential(_Stage(16, 16, 1), _Stage(16, 32, 2), _Stage(32, 64, 2))
        self.pool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def step_times(model, x, y, steps=10, warmup=3):
    """(best, median) seconds of one Adam training step of ``model`` on (x, y)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    model.train()
    times = []
    for i in range(warmup + steps):
        sync()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--formats", default="int8,e4m3,e2m1")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# QAT step vs float step, batch {args.batch}, Adam, best/median of {args.steps} after 3 warm-up; "
          f"{where}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    print("| model | format | best ms | median ms | x float (median) |")
    print("|---|---|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    for name, make, shape in (("digits CNN", DigitsCNN, (1, 8, 8)), ("ResNet-8 (CIFAR)", ResNet8, (3, 32, 32))):
        torch.manual_seed(0)
        x = torch.randn((args.batch,) + shape, generator=g).to(dev)
        y = torch.randint(0, 10, (args.batch,), generator=g).to(dev)
        base = None
        for fmt in ["float"] + args.formats.split(","):
            model = make()
            if fmt != "float":
                model = fpq.convert(model.eval(), fmt=fmt)
                fpq.calibrate(model, [x[:64].cpu()])
            best, med = step_times(model.to(dev), x, y, steps=args.steps)
            base = med if fmt == "float" else base
            print(f"| {name} | {fmt} | {best * 1e3:.2f} | {med * 1e3:.2f} | {med / base:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
