#!/usr/bin/env python
"""Training images per second: ignore_attn's trainer against a plain PyTorch loop, same model, same batch, one run.

The plain loop is what most PyTorch code does: torchvision transforms (pad-and-crop shifts, flips, ToTensor,
Normalize) in a DataLoader with worker processes, a float32 eager model, `loss.backward()`, `SGD.step()`. It is
given the benefit of the doubt: no host sync per step (the loss is summed on the device), pinned memory on CUDA.
The trainer side is `ignore_attn.engine.TrainStep` fed by `ignore_attn.data`'s loader, with whatever the trainer
would use on that device (by default: bf16, channels-last and CUDA graphs on CUDA; bf16 and channels-last on a CPU
with native bf16 (AVX512-BF16, AMX), float32 eager on other CPUs).
Both time the same number of steps after the same warm-up, data loading included.

examples:
    python benchmarks/train_throughput.py --arch resnet20-cifar --batch 64 --steps 20 --device cpu
    python benchmarks/train_throughput.py --arch resnet50-cifar --attention se-ign3 --batch 128 --steps 200 --device cuda
    python benchmarks/train_throughput.py --data ../shared/data/cifar10-jpg --device cuda   # both read the same JPEGs
    python benchmarks/train_throughput.py --arch resnet8-cifar --image-size 16 --batch 64 --device cpu --threads 1 \
        --modes default,cl,bf16,bf16+cl,compile,compile+bf16+cl --repeat 3   # CPU modes against the plain loop, interleaved
"""
from __future__ import annotations
import argparse, json, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
import torch
import torch.nn.functional as F


def parse_args(argv=None) -> argparse.Namespace:
    "Command-line options."
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("examples:")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50-cifar", help="model name (ignore_attn.models.list_models())")
    p.add_argument("--attention", default="se-ign3", help="attention spec, e.g. standard, se, se-ign3")
    p.add_argument("--batch", type=int, default=128, help="training batch size (both sides)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before timing (worker start, cuDNN, capture)")
    p.add_argument("--repeat", type=int, default=1, help="alternate the two measurements this many times; report medians")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--data", default=None, help="ImageFolder root with train/<class>/*, or a folder of CIFAR-10 pickles; "
                                                "default: in-memory 32x32 images")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"), help="trainer side autocast")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="trainer side memory format")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="trainer side torch.compile")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None, help="trainer side CUDA graphs")
    p.add_argument("--image-size", type=int, default=32, help="side of the in-memory images (without --data)")
    p.add_argument("--modes", default=None,
                   help="comma-separated trainer modes measured in turn against the plain loop, each a '+' of "
                        "default, cl (channels-last), nocl, bf16 (autocast), compile; overrides --amp/--channels-last/--compile")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda": torch.cuda.synchronize(device)


def _batches(loader, batch: int, set_epoch=None):
    "Endless full batches, epoch after epoch (a short last batch is skipped on both sides)."
    epoch = 0
    while True:
        if set_epoch is not None: set_epoch(epoch)
        yield from ((x, y) for x, y in loader if x.shape[0] == batch)
        epoch += 1


def _timed(step_fn, batches, steps: int, warmup: int, batch: int, device: torch.device) -> float:
    "Images per second of `steps` calls of step_fn(x, y) after `warmup` untimed ones."
    for _ in range(warmup): step_fn(*next(batches))
    _sync(device); t0 = time.perf_counter()
    for _ in range(steps): step_fn(*next(batches))
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


class _ArrayImages(torch.utils.data.Dataset):
    "uint8 HWC images as PIL images through torchvision transforms (the plain loop's data set without --data)."
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform
    def __len__(self): return len(self.images)
    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _is_cifar(data: str | None) -> bool:
    "Whether `data` is (or holds) a folder of CIFAR-10 pickles rather than an ImageFolder tree."
    from ignore_attn.data import CIFAR_FILES, cifar_folder
    return bool(data) and (cifar_folder(data, "cifar10") / CIFAR_FILES["cifar10"]["meta"]).is_file()


def _data_config(data: str | None, n_images: int, batch: int, image_size: int = 32):
    "The trainer side's DataConfig: the CIFAR pickles or ImageFolder at `data` (n_images of it), else Cluttered Digits."
    from ignore_attn.data import DataConfig
    if not data: return DataConfig(dataset="cluttered-digits", n_train=n_images, n_val=batch, n_test=batch, image_size=image_size)
    return DataConfig(dataset="cifar10" if _is_cifar(data) else "imagefolder", data_dir=data, limit_train=n_images, val_size=0)


def stage_inputs(data: str, batch: int, n_images: int) -> dict:
    """Both sides' data built once on the CPU (a caller that forks one process per measurement builds it before):
    the trainer's resident loaders and the plain loop's uint8 HWC images with labels."""
    from ignore_attn.data import build_data
    cfg = _data_config(data, n_images, batch)
    trainer = build_data(cfg, batch_size=batch, device="cpu", seed=0)
    x, y = trainer.train.images, trainer.train.labels
    return {"n_images": n_images, "trainer": trainer,
            "plain": (x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy())}


def data_on(data, device: torch.device):
    "A copy of CPU-resident `Data` whose training loader serves from `device` (its uint8 tensors copied there once)."
    import copy, dataclasses
    ld = copy.copy(data.train)
    ld.device = torch.device(device)
    ld.images, ld.labels, ld.scale, ld.shift = (t.to(device) for t in (ld.images, ld.labels, ld.scale, ld.shift))
    return dataclasses.replace(data, train=ld)


def plain_loop(args, device: torch.device, image_size: int, num_classes: int, n_images: int, images=None):
    """The reference: torchvision transforms in a DataLoader, float32 eager model, SGD; returns a timing function.
    `images`: (uint8 (N, H, W, 3), labels) already in memory (as torchvision's CIFAR10 data set holds them)."""
    from torchvision import datasets, transforms
    from ignore_attn.models import get_model
    tf = transforms.Compose([transforms.RandomCrop(image_size, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])
    if images is None and _is_cifar(args.data):
        images = stage_inputs(args.data, args.batch, n_images)["plain"]
    if images is not None:
        ds = _ArrayImages(images[0], images[1], tf)
    elif args.data:
        ds = datasets.ImageFolder(str(Path(args.data) / "train"), transform=tf)
    else:
        rng = np.random.default_rng(0)
        ds = _ArrayImages(rng.integers(0, 256, (n_images, image_size, image_size, 3), dtype=np.uint8),
                          rng.integers(0, num_classes, n_images), tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         drop_last=True, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    torch.manual_seed(0)
    model = get_model(args.arch, num_classes=num_classes, attention=args.attention).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    total = torch.zeros((), device=device)

    def step(x, y):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward(); opt.step()
        total.add_(loss.detach())

    batches = _batches(loader, args.batch)
    return lambda steps, warmup: _timed(step, batches, steps, warmup, args.batch, device)


def trainer_loop(args, n_images: int, data=None):
    """This project's path: ignore_attn.data loader + TrainStep as the trainer sets them up; returns a timing function.
    `data`: CPU-resident `Data` built already (`stage_inputs`), copied to the device here instead of built again."""
    from ignore_attn.data import build_data
    from ignore_attn.models import get_model
    from ignore_attn.train import TrainConfig, make_schedule, param_groups, resolve_config
    from ignore_attn.engine import TrainStep, resolve_runtime
    data_cfg = _data_config(args.data, n_images, args.batch, getattr(args, "image_size", 32))
    cfg = resolve_config(TrainConfig(arch=args.arch, attention=args.attention, data=data_cfg, batch_size=args.batch,
                                     lr=0.01, device=args.device, amp=args.amp, channels_last=args.channels_last,
                                     compile=args.compile, cuda_graphs=args.cuda_graphs, quiet=True))
    rt = resolve_runtime(cfg)
    if rt.device.type == "cuda": torch.backends.cudnn.benchmark = True
    data = build_data(cfg.data, batch_size=args.batch, device=rt.device, seed=0) if data is None else data_on(data, rt.device)
    torch.manual_seed(0)
    model = get_model(cfg.arch, num_classes=data.num_classes, attention=cfg.attention).to(rt.device)
    if rt.channels_last: model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                          **({"fused": True} if rt.device.type == "cuda" else {}))
    net = torch.compile(model, dynamic=False) if rt.compile else model
    train_step, schedule = TrainStep(net, opt, rt), make_schedule(cfg)
    total = torch.zeros((), device=rt.device, dtype=torch.float64)

    def step(x, y):
        loss, correct = train_step(x, y, schedule(0.0))
        total.add_(loss)

    batches = _batches(data.train, args.batch, data.train.set_epoch)
    return rt, data, (lambda steps, warmup: _timed(step, batches, steps, warmup, args.batch, rt.device))


def mode_args(args: argparse.Namespace, mode: str) -> argparse.Namespace:
    "A copy of `args` set to one trainer mode, e.g. 'bf16+cl' or 'compile+bf16+cl' ('default': the trainer's own choice)."
    parts = set(mode.split("+"))
    unknown = parts - {"default", "cl", "nocl", "bf16", "compile"}
    if unknown: sys.exit(f"unknown mode part(s) {sorted(unknown)} in {mode!r}; use default, cl, nocl, bf16, compile joined by '+'")
    cl = True if "cl" in parts else False if "nocl" in parts else None
    return argparse.Namespace(**{**vars(args), "amp": "bf16" if "bf16" in parts else "off" if parts - {"default"} else args.amp,
                                 "channels_last": cl, "compile": "compile" in parts})


def compare_modes(args: argparse.Namespace, modes: list[str]) -> dict:
    "Each mode's img/s and its ratio to the plain loop, measured round-robin (plain, mode 1, mode 2, ...) `repeat` times."
    n_images = args.batch * min(args.warmup + args.steps + 1, 80)
    timers = {}
    for m in modes:
        rt, data, timers[m] = trainer_loop(mode_args(args, m), n_images)
    plain = plain_loop(args, rt.device, data.image_size, data.num_classes, n_images)
    runs = {m: [] for m in ["plain"] + modes}
    for i in range(args.repeat):
        for m in runs:
            t = plain if m == "plain" else timers[m]
            runs[m].append(t(args.steps, args.warmup if i == 0 else 1))
    dev = f"cpu ({torch.get_num_threads()} threads)" if rt.device.type == "cpu" else torch.cuda.get_device_name(rt.device)
    print(f"{args.arch} + {args.attention}, {args.image_size} px, batch {args.batch}, {args.steps} timed steps, "
          f"{args.repeat} round(s), device {dev}")
    ratios = {m: [b / a for a, b in zip(runs["plain"], r)] for m, r in runs.items()}
    for m, r in runs.items():
        print(f"{m:24s} {statistics.median(r):8.1f} img/s   x{statistics.median(ratios[m]):.2f} of plain "
              f"(per round {', '.join(f'{x:.2f}' for x in ratios[m])})")
    res = {"arch": args.arch, "attention": args.attention, "image_size": args.image_size, "batch": args.batch,
           "device": dev, "img_per_s": runs, "ratio_to_plain": ratios}
    if args.json: Path(args.json).write_text(json.dumps(res, indent=2))
    return res


def main(argv=None) -> dict:
    "Measure both sides, print them and the ratio; returns the figures."
    args = parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    if args.modes: return compare_modes(args, [m.strip() for m in args.modes.split(",") if m.strip()])
    n_images = args.batch * min(args.warmup + args.steps + 1, 80)  # later steps cycle through the epochs again
    rt, data, trainer = trainer_loop(args, n_images)
    plain = plain_loop(args, rt.device, data.image_size, data.num_classes, n_images)
    ref, ours = [], []
    for i in range(args.repeat):  # alternate, so drifting machine load hits both sides alike
        ref.append(plain(args.steps, args.warmup if i == 0 else 1))
        ours.append(trainer(args.steps, args.warmup if i == 0 else 1))
    r, o = statistics.median(ref), statistics.median(ours)
    ratios = [b / a for a, b in zip(ref, ours)]  # each pair measured back to back: robust to slow load drifts
    what = (f"amp {rt.amp_dtype or 'off'}, channels_last {'on' if rt.channels_last else 'off'}, "
            f"compile {'on' if rt.compile else 'off'}, CUDA graphs {'on' if rt.cuda_graphs else 'off'}")
    dev = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{args.arch} + {args.attention}, batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up, "
          f"{args.repeat} repeat(s), device {dev}, data {args.data or 'in-memory 32x32'}")
    print(f"plain loop (torchvision transforms, DataLoader x{args.workers}, float32 eager): {r:10.1f} img/s")
    print(f"ignore_attn trainer ({what}): {o:10.1f} img/s")
    print(f"ratio trainer / plain: {o / r:.2f}x (medians); per back-to-back pair: median {statistics.median(ratios):.2f}x, "
          f"range {min(ratios):.2f}-{max(ratios):.2f}x; best of each side: {max(ours) / max(ref):.2f}x")
    res = {"arch": args.arch, "attention": args.attention, "batch": args.batch, "steps": args.steps,
           "device": dev, "plain_img_per_s": r, "trainer_img_per_s": o, "ratio": o / r,
           "plain_runs": ref, "trainer_runs": ours, "pair_ratios": ratios, "best_ratio": max(ours) / max(ref),
           "trainer_settings": what}
    if args.json: Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
