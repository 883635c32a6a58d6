#!/usr/bin/env python
"""Does pairing the runs of one seed narrow the interval of a difference? The quick sweep's runs, paired and not.

For each seed, trains attention specs A and B (default standard and se-ign3) on the quick sweep's data and model, once
with `backbone_init='seed'` (paired: one backbone init per seed) and once with `backbone_init='spec'` (the old build:
the attention draws shift every backbone tensor). Batches and augmentation depend on the seed alone in both. Prints the
standard deviation over seeds of the differences B - A (test error, points) in each mode, and the unpaired spread
sqrt(var A + var B) of the same runs; writes every run's numbers to --json (and each run, as it ends, to a .jsonl).

Pick A and B of different structure: `standard` builds alike in both modes (it has no attention to draw), and two
specs with the same parameters (se and se-ign3, which differ only in the flip) drew the same numbers in the old build
too, so they were paired already and the test would show nothing.

example (about 20 runs of 20 s on an idle 2-core machine):
    python benchmarks/pairing_spread.py --specs standard,se-ign3 --seeds 8 --jobs 2 --json runs/pairing.json
"""
from __future__ import annotations
import argparse, json, statistics, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv=None) -> argparse.Namespace:
    "Command-line options."
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("example")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specs", default="standard,se-ign3", help="the attention specs A,B (the difference is B - A)")
    p.add_argument("--seeds", type=int, default=8, help="seeds 0 .. N-1")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument("--epochs", type=int, default=None, help="default: the quick sweep's")
    p.add_argument("--amp", default="off", choices=("auto", "bf16", "off"), help="autocast of every run")
    p.add_argument("--inits", default="seed,spec", help="the backbone_init modes to train (seed: paired, spec: the old build)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + N - 1")
    p.add_argument("--json", default=None, help="write every run's numbers and the summary here")
    return p.parse_args(argv)


def quick_config(attention: str, seed: int, backbone_init: str, epochs: int | None, amp: str):
    "The quick sweep's run of `attention` and `seed` (no folder written)."
    from ignore_attn.data import DataConfig
    from ignore_attn.experiments import SWEEPS
    from ignore_attn.train import TrainConfig
    q = SWEEPS["quick"]
    data = DataConfig(dataset=q["datasets"][0], n_train=q["n_train"], n_val=q["n_val"], n_test=q["n_test"],
                      image_size=q["image_size"], augment=q["augment"], workers=0)
    return TrainConfig(arch=q["archs"][0], attention=attention, seed=seed, schedule=q["schedule"],
                       epochs=epochs or q["epochs"], batch_size=q["batch_size"], lr=q["lr"], device="cpu", amp=amp,
                       backbone_init=backbone_init, quiet=True, data=data)


def one_run(job: tuple) -> dict:
    "Train one run in this (one-thread) process; its test error and time."
    import torch
    torch.set_num_threads(1)
    from ignore_attn.engine import train
    attention, seed, backbone_init, epochs, amp = job
    t0 = time.perf_counter()
    m = train(quick_config(attention, seed, backbone_init, epochs, amp))
    return {"attention": attention, "seed": seed, "backbone_init": backbone_init, "amp": amp,
            "test_top1_err": m["test_top1_err"], "seconds": time.perf_counter() - t0}


def summarise(runs: list[dict], a: str, b: str) -> dict:
    "Per mode: mean and std over seeds of B - A, and the unpaired spread sqrt(var A + var B)."
    out = {}
    for mode in sorted({r["backbone_init"] for r in runs}):
        err = {(r["attention"], r["seed"]): r["test_top1_err"] for r in runs
               if r["backbone_init"] == mode or r["attention"] == "standard"}   # standard: one build in both modes
        seeds = sorted(s for att, s in err if att == a and (b, s) in err)
        ea, eb = [err[(a, s)] for s in seeds], [err[(b, s)] for s in seeds]
        d = [y - x for x, y in zip(ea, eb)]
        if len(seeds) < 2: continue
        out[mode] = {"seeds": len(seeds), f"{a}_mean": statistics.mean(ea), f"{b}_mean": statistics.mean(eb),
                     "diff_mean": statistics.mean(d), "diff_std": statistics.stdev(d),
                     "unpaired_std": (statistics.variance(ea) + statistics.variance(eb)) ** 0.5,
                     "corr": statistics.correlation(ea, eb) if len(seeds) > 2 else None}
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    specs = args.specs.split(",")   # 'standard' builds alike in both modes: train it once (seed) for comparisons with it
    jobs = [(spec, s, mode, args.epochs, args.amp) for s in range(args.first_seed, args.first_seed + args.seeds)
            for mode in args.inits.split(",") for spec in specs if not (spec == "standard" and mode == "spec")]
    t0 = time.perf_counter()
    runs = []
    with ProcessPoolExecutor(args.jobs) as pool:   # seed by seed: an interrupted sweep still leaves whole seeds in --json
        for r in pool.map(one_run, jobs):
            runs.append(r)
            print(json.dumps(r), flush=True)
            if args.json: Path(args.json).with_suffix(".jsonl").open("a").write(json.dumps(r) + "\n")
    a, b = (specs + specs)[:2]
    res = {"specs": specs, "runs": runs, "summary": summarise(runs, a, b) if len(specs) == 2 else {},
           "wall_s": time.perf_counter() - t0}
    for mode, s in res["summary"].items():
        print(f"backbone_init={mode:4s}  {s['seeds']} seeds: {b} - {a} = {s['diff_mean']:+.2f} points, std of the paired "
              f"differences {s['diff_std']:.2f}, unpaired spread sqrt(var+var) {s['unpaired_std']:.2f}, "
              f"correlation {s['corr'] if s['corr'] is None else round(s['corr'], 2)}")
    print(f"{len(runs)} runs in {res['wall_s']:.0f} s, median {statistics.median(r['seconds'] for r in runs):.1f} s per run")
    if args.json: Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
