"""The ``kexue`` command: ``kexue demo``, ``kexue bench [op]``."""
from __future__ import annotations

import argparse
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
    return cmd_bench(bench_args)


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

    p = sub.add_parser("demo", help="build info and the main benchmark")
    common(p)
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
