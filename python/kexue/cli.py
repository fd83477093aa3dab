"""The ``kexue`` command: ``kexue demo``, ``kexue bench [op]``, ``kexue train <model>``."""
from __future__ import annotations

import argparse
import os
import sys

import torch


def _default_device() -> str:
    import kexue

    return "cuda" if torch.cuda.is_available() and kexue.build_info()["cuda"] else "cpu"


def cmd_bench(args) -> int:
    from kexue.bench import SUITES, format_table, machine_info, run_cases, write_json

    names = list(SUITES) if args.op in (None, "all") else [args.op]
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        print(f"kexue bench: unknown op {unknown[0]!r}; choose from {', '.join(SUITES)} or all", file=sys.stderr)
        return 2
    device = args.device or _default_device()
    cases = [c for n in names for c in SUITES[n](device)]
    info = machine_info(device)
    print(f"# kexue bench on {info.get('gpu', info['cpu'])} ({device}), torch {info['torch']}, "
          f"{info['threads']} threads, {info['date']}")
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else None
    results = run_cases(cases, device, compile_reference=not args.no_compile, min_time=args.min_time,
                        rounds=args.rounds, log=log)
    print(format_table(results))
    if args.json:
        write_json(args.json, results, device)
        print(f"\nresults written to {args.json}")
    return 0


def cmd_demo(args) -> int:
    import kexue

    info = kexue.build_info()
    print("kexue", info["version"])
    print(f"  built against torch {info['torch_version']} (running {torch.__version__})")
    print(f"  CUDA kernels: {'yes, archs ' + ','.join(info['cuda_archs']) if info['cuda'] else 'no (CPU build)'}")
    print(f"  CUDA device available: {torch.cuda.is_available()}")
    print()
    print("Coupling-layer microbenchmark (ratios > 1: kexue faster)")
    bench_args = argparse.Namespace(op="coupling", device=args.device, json=args.json, no_compile=args.no_compile,
                                    min_time=args.min_time, rounds=args.rounds, verbose=False)
    rc = cmd_bench(bench_args)
    if rc or args.bench_only:
        return rc
    from kexue import demo

    demo.run(args.out, scale=args.scale)
    print(f"\nall demo outputs are under {args.out}/")
    return 0


def parse_value(text: str):
    """A ``--set`` value: true/false/yes/no/on/off, none/null, an int, a float, a JSON list or
    object, else the string itself."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.strip()[:1] in "[{":
        import json

        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def parse_sets(pairs) -> dict:
    """``["depth=4", "prior=logistic"]`` -> ``{"depth": 4, "prior": "logistic"}``."""
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        out[key] = parse_value(value)
    return out


def cmd_train(args) -> int:
    from kexue.train import registry

    if args.list:
        names = registry.names()
        if not names:
            print("no models registered")
        width = max((len(n) for n in names), default=0)
        for name in names:
            entry = registry.get(name)
            print(f"{name:<{width}}  {entry.description} (default data: {entry.default_data})")
        return 0
    missing = [flag for flag, v in (("<model>", args.model), ("--steps", args.steps), ("--out", args.out)) if v is None]
    if missing:
        print(f"kexue train: {', '.join(missing)} required (or --list to see the models)", file=sys.stderr)
        return 2
    from kexue.train import train

    try:
        model_kwargs = parse_sets(args.set)
        result = train(args.model, args.data, steps=args.steps, batch_size=args.batch_size, out_dir=args.out,
                       lr=args.lr, eval_every=args.eval_every, sample_every=args.sample_every,
                       checkpoint_every=args.checkpoint_every, resume=args.resume, seed=args.seed,
                       progress=not args.no_progress, model_kwargs=model_kwargs or None,
                       max_grad_norm=args.max_grad_norm, log_every=args.log_every,
                       eval_batch_size=args.eval_batch_size, device=args.device)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"kexue train: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        for split in ("train", "test"):
            vals = ", ".join(f"{k} {v:.4g}" for k, v in result[split].items() if isinstance(v, float))
            print(f"step {result['step']} {split}: {vals}")
        print(f"outputs in {args.out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kexue", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
        p.add_argument("--json", default=None, help="also write the results as JSON to this path")
        p.add_argument("--no-compile", action="store_true", help="skip the torch.compile(reference) column")
        p.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per variant and round")
        p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")

    p = sub.add_parser("bench", help="microbenchmarks: ours vs eager vs torch.compile(reference)")
    p.add_argument("op", nargs="?", default=None, help="op family (coupling, actnorm) or all")
    p.add_argument("-v", "--verbose", action="store_true")
    common(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="build info, the main benchmark, and short model runs with figures")
    common(p)
    p.add_argument("--out", default="runs/demo", help="where the demo's runs and figures go")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the demo's training steps")
    p.add_argument("--bench-only", action="store_true", help="stop after the benchmark")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a registered model (kexue train --list shows them)")
    p.add_argument("model", nargs="?", default=None, help="registered model name")
    p.add_argument("--list", action="store_true", help="list the registered models and exit")
    p.add_argument("--data", default=None, help="toy density name, 'digits' or a .npy path (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (a resumed run continues to it)")
    p.add_argument("--batch-size", type=int, default=None, help="per-process batch size (default 64 for a new run)")
    p.add_argument("--out", default=None, help="output directory: metrics.jsonl, checkpoint.pt, figures")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3)")
    p.add_argument("--eval-every", type=int, default=None, help="test-set evaluation period (default: at the end)")
    p.add_argument("--sample-every", type=int, default=None, help="figure period (default: at the end)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint period (default: at the end)")
    p.add_argument("--log-every", type=int, default=None, help="train-metric period (default ~1%% of the steps)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="default: the batch size")
    p.add_argument("--max-grad-norm", type=float, default=None, help="gradient clipping norm (default 100)")
    p.add_argument("--seed", type=int, default=None, help="seed of init, batches and noise (default 0)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda when available; cpu under torchrun)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model option for the model's builder (repeatable)")
    p.set_defaults(func=cmd_train)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
