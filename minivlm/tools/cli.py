"""The `minivlm` command line (also `python -m minivlm`).

    minivlm bench kernels [--json PATH] [--quick] [--threads N] [--reps N]
    minivlm bench kernels --device cuda [--json PATH] [--quick] [--reps N]
    minivlm bench model NAME [--json PATH] [--quick] [--threads N] [--reps N]
    minivlm bench processor NAME [--json PATH] [--quick] [--threads N] [--reps N]
    minivlm demo [--threads N] [--seed S]
    minivlm generate --model DIR --image PATH --prompt TEXT [...]     (minivlm/tools/run.py)
    minivlm classify --model DIR --image PATH --labels "a cat,a dog"  (minivlm/tools/run.py)
    minivlm parity DIR|ARCH [--image PATH] [--prompt TEXT] [...]      (minivlm/tools/parity/)
    minivlm tiny ARCH DIR          a tiny random checkpoint folder, as Transformers saves one (checkpoints.py)
    minivlm train tiny-vlm --out DIR [...]   train the tiny VLM from scratch (minivlm/tools/train_cli.py)
    minivlm eval tiny-vlm [--model DIR] [...]   score it on freshly drawn pictures
    minivlm --version

Errors of the checkpoint commands (generate, classify, parity) print one line, `minivlm COMMAND: error:
...`, and exit with 1; `--debug` shows the traceback instead. Usage errors (an unknown option, a missing
argument) are argparse's: its message and exit status 2.

Each subcommand imports its module (and with it torch, the compiled extension and Transformers) only
when it runs, so `minivlm --help` and `minivlm --version` answer at once. A bare `minivlm` prints the
help and exits with 2, argparse's status for a usage error: no command was given.
"""

import argparse
import sys

from minivlm import __version__

#: What `minivlm bench` can measure; each name maps to the module whose run() measures it.
BENCHMARKS = {
    "kernels": "minivlm.tools.bench.kernels",
    "model": "minivlm.tools.bench.models",
    "processor": "minivlm.tools.bench.processor",
}
#: The models `minivlm bench model NAME` knows, and the processors `minivlm bench processor NAME` knows.
BENCH_MODELS = ("llava_next", "blip2", "blip2_t5", "kosmos2", "idefics", "altclip")
BENCH_PROCESSORS = ("llava_next", "blip2", "kosmos2", "idefics", "altclip")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run_bench(args) -> int:
    import importlib

    if args.device == "cuda":
        if args.what != "kernels":
            raise SystemExit(f"minivlm bench {args.what}: --device cuda is for the kernels only; the model "
                             f"benchmarks run on the CPU")
        if args.name is not None or args.threads is not None:
            raise SystemExit("minivlm bench kernels --device cuda: takes no NAME and no --threads")
        from .bench import cuda
        return cuda.run(json_path=args.json, quick=args.quick, reps=args.reps)
    run = importlib.import_module(BENCHMARKS[args.what]).run
    extra = {}
    if args.what == "model":
        if args.name not in BENCH_MODELS:
            raise SystemExit(f"minivlm bench model: NAME must be one of {', '.join(BENCH_MODELS)}, "
                             f"got {args.name!r}")
        extra["name"] = args.name
    elif args.what == "processor":
        if args.name not in BENCH_PROCESSORS:
            raise SystemExit(f"minivlm bench processor: NAME must be one of {', '.join(BENCH_PROCESSORS)}, "
                             f"got {args.name!r}")
        extra["name"] = args.name
    elif args.name is not None:
        raise SystemExit(f"minivlm bench {args.what}: takes no NAME, got {args.name!r}")
    return run(json_path=args.json, quick=args.quick, threads=args.threads, reps=args.reps, **extra)


def run_demo(args) -> int:
    from . import demo

    return demo.run(threads=args.threads, seed=args.seed)


def add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="time minivlm against its reference and PyTorch / Transformers",
        description="Time minivlm's kernels side by side with the reference math and the library "
                    "implementations they replace, and check them against the performance targets.")
    p.add_argument("what", choices=list(BENCHMARKS),
                   help="what to benchmark: the kernels, a whole model, or a processor call")
    p.add_argument("name", nargs="?", metavar="NAME",
                   help=f"with 'model': which one ({', '.join(BENCH_MODELS)}); with 'processor': "
                        f"{', '.join(BENCH_PROCESSORS)}")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the kernels run (cuda: the GPU kernels against SDPA's flash backend)")
    p.add_argument("--json", metavar="PATH", help="also write every number to PATH as JSON")
    p.add_argument("--quick", action="store_true", help="small shapes: a smoke test of a few seconds")
    p.add_argument("--threads", type=positive_int, metavar="N", help="torch.set_num_threads(N) first")
    p.add_argument("--reps", type=positive_int, metavar="N", help="timed repetitions per case")
    p.set_defaults(func=run_bench)


def add_demo_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run each piece of minivlm on a small example against the reference",
        description="Run each kernel on a small random example and print its difference from the "
                    "reference math and its timing.")
    p.add_argument("--threads", type=positive_int, metavar="N", help="torch.set_num_threads(N) first")
    p.add_argument("--seed", type=int, metavar="S",
                   help="the seed of the tiny VLM's picture (default: a new picture each run)")
    p.set_defaults(func=run_demo)


def run_tiny(args) -> int:
    from .checkpoints import tiny_checkpoint
    from .parity import require_transformers

    require_transformers()
    folder = tiny_checkpoint(args.arch, args.folder, seed=args.seed)
    print(f"wrote a tiny random {args.arch} checkpoint to {folder}: "
          f"{', '.join(sorted(p.name for p in folder.iterdir()))}")
    return 0


def add_tiny_parser(subparsers, common) -> None:
    from .checkpoints import ARCHS

    p = subparsers.add_parser(
        "tiny", parents=[common], help="write a tiny random checkpoint folder to try the other commands on",
        description="Write a tiny random-weight checkpoint of ARCH to DIR as Transformers saves one (config.json, "
                    "model.safetensors, generation_config.json, the tokenizer, the processor settings, a chat "
                    "template): what the tests and the README's tour run on. Needs Transformers: pip install "
                    "'minivlm[parity]'.")
    p.add_argument("arch", choices=ARCHS, metavar="ARCH", help=f"one of {', '.join(ARCHS)}")
    p.add_argument("folder", metavar="DIR", help="the folder to write (absent or empty)")
    p.add_argument("--seed", type=int, default=0, help="the seed of the random weights (default 0)")
    p.set_defaults(func=run_tiny)


def common_options() -> argparse.ArgumentParser:
    """The options every checkpoint command takes (an argparse parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return common


def error_line(error: BaseException) -> str:
    """An exception as one line: its first line, with a note of how many more lines --debug shows."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    more = f" (and {len(lines) - 1} more lines: --debug shows them)" if len(lines) > 1 else ""
    return lines[0] + more


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minivlm", description="minivlm: a minimal, educational PyTorch reference of vision-language models")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_bench_parser(subparsers)
    add_demo_parser(subparsers)
    from . import parity, run       # parser builders only: these modules import torch when they run
    common = common_options()
    run.add_generate_parser(subparsers, common)
    run.add_classify_parser(subparsers, common)
    parity.add_parser(subparsers, common)
    add_tiny_parser(subparsers, common)
    from . import train_cli
    train_cli.add_parsers(subparsers, common)
    return parser


def main(argv=None) -> int:
    """Parse argv (default sys.argv[1:]), run the subcommand, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if not hasattr(args, "debug"):
        return args.func(args)
    try:
        return args.func(args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        if args.debug:
            raise
        print(f"minivlm {args.command}: error: {error_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
