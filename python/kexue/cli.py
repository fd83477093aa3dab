"""The ``kexue`` command: ``kexue train MODEL``, ``kexue sample RUN_DIR``, ``kexue bench [op]``,
``kexue demo``.

Errors are one line on stderr naming what was wrong and what is valid, with exit status 2 for
a bad request (unknown model, option, data, device) and 1 for a failure while running (a full
disk); ``--debug`` shows the Python traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Dict, List, Optional, Sequence

import torch

# Flags of ``kexue train`` that ``--set`` keys are taken for when the model has no option of that
# name: ``--set lr=...`` is then an error naming the flag. (A model's own option wins: Glow's
# ``levels`` is its number of flow levels, the data's levels are ``--levels``.)
TRAIN_FLAGS = {"steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "seed": "--seed",
               "device": "--device", "out": "--out", "out_dir": "--out", "data": "--data",
               "n_levels": "--levels", "resume": "--resume",
               "max_grad_norm": "--max-grad-norm", "eval_every": "--eval-every",
               "sample_every": "--sample-every", "checkpoint_every": "--checkpoint-every",
               "log_every": "--log-every", "eval_batch_size": "--eval-batch-size"}
# Exceptions that mean "the request was wrong" (exit 2) rather than "running it failed" (exit 1).
USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


class CommandError(Exception):
    """A bad command line, reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the whole usage block above them)."""

    def error(self, message: str):  # noqa: D401 - argparse's interface
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _default_device() -> str:
    import kexue

    return "cuda" if torch.cuda.is_available() and kexue.build_info()["cuda"] else "cpu"


# ---- kexue bench / demo ------------------------------------------------------------------------

def _suite_names() -> List[str]:
    from kexue.bench import SUITES

    return list(SUITES)


def cmd_bench(args) -> int:
    from kexue.bench import SUITES, format_table, machine_info, run_cases, write_json
    from kexue.bench.harness import pin_allocator

    names = list(SUITES) if args.op in (None, "all") else [args.op]
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise CommandError(f"unknown op family {unknown[0]!r}; choose from {', '.join(SUITES)} or all")
    if args.device:
        from kexue.train.trainer import check_device

        check_device(args.device)
    device = args.device or _default_device()
    if not device.startswith("cuda"):
        pin_allocator()  # before any case allocates: see its docstring
    cases = [c for n in names for c in SUITES[n](device)]
    info = machine_info(device)
    print(f"# kexue bench on {info.get('gpu', info['cpu'])} ({device}), torch {info['torch']}, "
          f"{info['threads']} threads, {info['date']}")
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else None
    modes = ["compiled"] if args.no_max_autotune else ["compiled", "compiled-max"]
    results = run_cases(cases, device, compile_reference=not args.no_compile, compile_modes=modes,
                        min_time=args.min_time,
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


# ---- kexue train -------------------------------------------------------------------------------

def parse_sets(pairs: Sequence[str], entry=None) -> Dict[str, object]:
    """``["depth=4", "prior=logistic"]`` -> ``{"depth": 4, "prior": "logistic"}``: each value read
    by its option's declared type when ``entry`` (a registry entry) is given, else loosely."""
    from kexue.train.options import parse_loose

    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CommandError(f"--set expects key=value, got {pair!r}")
        if entry is None:
            out[key] = parse_loose(value)
            continue
        opt = entry.option_index.get(key)
        if opt is None and key in TRAIN_FLAGS:
            raise CommandError(f"--set {key}=...: {key} is a kexue train flag, not a model option; "
                               f"use {TRAIN_FLAGS[key]}")
        if opt is None:
            if entry.open_options:
                out[key] = parse_loose(value)
                continue
            raise CommandError(f"--set {pair}: {entry.unknown_option(key)}")
        try:
            out[key] = opt.parse(value)
        except ValueError as e:
            raise CommandError(str(e)) from None
    return out


def format_options(entry) -> str:
    """The ``--set`` keys of a registry entry, one per line: name, type, default and meaning."""
    lines = [f"options of {entry.name} (--set KEY=VALUE):"]
    if not entry.options:
        lines.append("  (none)")
    width = max((len(o.name) for o in entry.options), default=0)
    for o in entry.options:
        head = f"  {o.name:<{width}}  {o.type or 'any'}, default {o.default!r}"
        lines.append(head)
        if o.help:
            lines += textwrap.wrap(o.help, 88, initial_indent=" " * (width + 4), subsequent_indent=" " * (width + 4))
    lines.append("")
    lines.append(f"training defaults: --steps {entry.steps} --batch-size {entry.batch_size} --lr {entry.lr:g}"
                 f" --data {entry.default_data}")
    return "\n".join(lines)


def cmd_train(args) -> int:
    from kexue.train import registry

    if args.list:
        names = registry.names()
        if not names:
            print("no models registered")
        width = max((len(n) for n in names), default=0)
        for name in names:
            entry = registry.get(name)
            print(f"{name:<{width}}  {entry.description} (data {entry.default_data}, {entry.steps} steps, "
                  f"batch {entry.batch_size}, lr {entry.lr:g})")
        print("\nkexue train MODEL --help lists a model's options")
        return 0
    if args.model is None:
        raise CommandError("name a model (kexue train --list shows them)")
    entry = registry.get(args.model)
    model_kwargs = parse_sets(args.set, entry)
    from kexue.train import train

    out = args.out if args.out is not None else os.path.join("runs", args.model)
    result = train(args.model, args.data, steps=args.steps, batch_size=args.batch_size, out_dir=out,
                   lr=args.lr, eval_every=args.eval_every, sample_every=args.sample_every,
                   checkpoint_every=args.checkpoint_every, resume=args.resume, seed=args.seed,
                   progress=not args.no_progress, model_kwargs=model_kwargs or None,
                   max_grad_norm=args.max_grad_norm, log_every=args.log_every,
                   eval_batch_size=args.eval_batch_size, device=args.device, n_levels=args.levels)
    if int(os.environ.get("RANK", "0")) == 0:
        for split in ("train", "test"):
            vals = ", ".join(f"{k} {v:.4g}" for k, v in result[split].items() if isinstance(v, float))
            print(f"step {result['step']} {split}: {vals}")
        print(f"outputs in {out}")
    return 0


# ---- kexue sample ------------------------------------------------------------------------------

def cmd_sample(args) -> int:
    from kexue.train.runs import load_run, sample_run

    run = load_run(args.run_dir, device=args.device or "cpu")
    run_dir = run.path.parent if run.path.is_file() else run.path
    out = args.out if args.out is not None else run_dir / ("generated.png" if run.entry.text is None else "generated.txt")
    for path in sample_run(run, args.n, out, seed=args.seed):
        print(path)
    return 0


# ---- the parser --------------------------------------------------------------------------------

def _train_model_of(argv: Sequence[str], train_parser: argparse.ArgumentParser) -> Optional[str]:
    """The MODEL of ``kexue train ... MODEL ...`` wherever it stands among the flags (read before
    parsing, for ``--help``'s option list)."""
    if not argv or argv[0] != "train":
        return None
    takes_value = {opt for a in train_parser._actions if a.nargs != 0 for opt in a.option_strings}
    tokens = iter(argv[1:])
    for token in tokens:
        if token.startswith("-"):
            if token in takes_value:
                next(tokens, None)
            continue
        return token
    return None


def _train_epilog(model: Optional[str]) -> Optional[str]:
    if model is None:
        return "kexue train MODEL --help lists that model's options and defaults"
    from kexue.train import registry

    try:
        return format_options(registry.get(model))
    except ValueError as e:
        return str(e)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The ``kexue`` parser; ``argv`` only decides which model ``kexue train --help`` describes."""
    import kexue

    parser = _Parser(prog="kexue", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"kexue {kexue.__version__} (torch {torch.__version__}, "
                                f"{'CUDA' if kexue.build_info()['cuda'] else 'CPU'} build)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def debug(p):
        p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")

    def common(p):
        p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
        p.add_argument("--json", default=None, help="also write the results as JSON to this path")
        p.add_argument("--no-compile", action="store_true", help="skip the torch.compile(reference) columns")
        p.add_argument("--no-max-autotune", action="store_true",
                       help="skip the torch.compile(reference, mode=\"max-autotune-no-cudagraphs\") column")
        p.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per variant and round")
        p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
        debug(p)

    suites = _suite_names()
    p = sub.add_parser("bench", help="microbenchmarks: ours vs eager vs torch.compile(reference)")
    p.add_argument("op", nargs="?", default=None, metavar="OP",
                   help=f"op family: {', '.join(suites)}, or all (the default)")
    p.add_argument("-v", "--verbose", action="store_true")
    common(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="build info, the main benchmark, and short model runs with figures")
    common(p)
    p.add_argument("--out", default="runs/demo", help="where the demo's runs and figures go")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the demo's training steps")
    p.add_argument("--bench-only", action="store_true", help="stop after the benchmark")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a registered model (kexue train --list shows them)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, help="registered model name")
    p.add_argument("--list", action="store_true", help="list the registered models and exit")
    p.add_argument("--data", default=None, help="toy density name, 'digits', a .npy or .txt path (default: the model's)")
    p.add_argument("--levels", type=int, default=None, metavar="N",
                   help="number of levels of integer .npy images (default: 256 for uint8, else max + 1)")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps (default: the model's)")
    p.add_argument("--batch-size", type=int, default=None, help="per-process batch size (default: the model's)")
    p.add_argument("--out", default=None, help="output directory (default runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the model's)")
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
                   help="a model option (repeatable; kexue train MODEL --help lists them)")
    debug(p)
    p.set_defaults(func=cmd_train)
    p.epilog = _train_epilog(_train_model_of(argv, p))

    p = sub.add_parser("sample", help="draw samples from a trained run (a kexue train output directory)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run's output directory (or its checkpoint.pt)")
    p.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--out", default=None,
                   help="file to write: .png (picture + .npy), .npy, or .txt for text models "
                        "(default RUN_DIR/generated.png or .txt)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    debug(p)
    p.set_defaults(func=cmd_sample)
    return parser


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text += f": {e.filename}"
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("KEXUE_DEBUG", "") not in ("", "0")
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"kexue {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place errors become a line of text
        if debug:
            raise
        status = 2 if isinstance(e, (CommandError,) + USAGE_ERRORS) else 1
        hint = "" if status == 2 else " (--debug shows the traceback)"
        print(f"kexue {args.command}: error: {_one_line(e)}{hint}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
