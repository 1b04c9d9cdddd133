"""The `theseus` command: `jobs`, `configure`, `run`.

    theseus jobs
    theseus configure JOB OUT.yaml [key=value ...]
    theseus run NAME CONFIG OUTDIR [key=value ...] [--fresh]
    theseus plot RUN_DIR
    theseus cooldown RUN_DIR --from STEP_OR_TOKENS [--fraction 0.2] [--shape 1-sqrt] [--name NAME]
    theseus sweep-cooldowns RUN_DIR --every N [--fraction 0.2] [--shape 1-sqrt]
    theseus generate SOURCE --prompt TEXT [--prompts-file FILE] [--chat] [--temperature T --top-k K --top-p P --seed S]
    theseus export SOURCE --to hf|keras-hub OUT [--force]

Bad input (an unknown job or key, a wrong type, an unset `???`, a missing file) is one
line on stderr and exit code 2; nothing is created or overwritten. A run that stops early
says why on one line: a NaN loss exits 1, SIGTERM 143 and SIGINT 130 (after a checkpoint).
Before the command: `--backend NAME`, and `--verbose` to let the frameworks' start-up lines
(TensorFlow's C++ logging, JAX's backend search) through to stderr; they are kept off it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import theseus  # noqa: F401  (sets the default Keras backend before Keras loads)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="theseus", description="Train language models with Keras 3.")
    parser.add_argument("--backend", choices=["jax", "tensorflow", "torch"], help="Keras backend (default: jax)")
    parser.add_argument("--verbose", action="store_true", help="let the frameworks' start-up lines through to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("jobs", help="list the registered jobs")
    configure = sub.add_parser("configure", help="write a job's full config as YAML")
    configure.add_argument("job")
    configure.add_argument("out", help="the YAML file to write")
    configure.add_argument("overrides", nargs="*", help="key=value (dotted or slash keys)")
    configure.add_argument("--force", action="store_true", help="overwrite an existing file")
    run = sub.add_parser("run", help="run (or resume) a job from its YAML in OUTDIR/NAME")
    run.add_argument("name")
    run.add_argument("config")
    run.add_argument("outdir")
    run.add_argument("overrides", nargs="*", help="key=value (dotted or slash keys)")
    run.add_argument(
        "--fresh", action="store_true", help="start over: move an existing OUTDIR/NAME aside instead of resuming it"
    )
    plot = sub.add_parser("plot", help="draw RUN_DIR/metrics.png (loss, val loss and lr against tokens)")
    plot.add_argument("run_dir")
    cooldown = sub.add_parser("cooldown", help="branch a WSD cooldown from a stable-phase checkpoint of RUN_DIR")
    cooldown.add_argument("run_dir")
    cooldown.add_argument(
        "--from", dest="point", required=True, help="a step (200) or tokens with a unit (819200t, 2M)"
    )
    cooldown.add_argument(
        "--fraction", type=float, default=0.2, help="decay length as a fraction of the parent's steps so far"
    )
    cooldown.add_argument("--steps", type=int, help="decay length in steps (instead of --fraction)")
    cooldown.add_argument("--shape", default="1-sqrt", help="linear, cosine or 1-sqrt")
    cooldown.add_argument(
        "--name", help="the branch's folder, beside RUN_DIR (default: RUN-cooldown-STEP-dDECAY-SHAPE)"
    )
    cooldown.add_argument("overrides", nargs="*", help="key=value for the branch (e.g. logging.log_interval=1)")
    sweep = sub.add_parser(
        "sweep-cooldowns", help="cool down from every N-th stable checkpoint; table + PNG of val loss vs tokens"
    )
    sweep.add_argument("run_dir")
    sweep.add_argument("--every", type=int, default=1, help="branch from every N-th stable-phase checkpoint")
    sweep.add_argument("--fraction", type=float, default=0.2)
    sweep.add_argument("--shape", default="1-sqrt")
    sweep.add_argument("overrides", nargs="*", help="key=value for every branch")
    generate = sub.add_parser(
        "generate",
        help="print completions from a run, RUN/checkpoints/step_N or a Hugging Face folder (one prompt streams)",
    )
    generate.add_argument("source")
    generate.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    generate.add_argument("--prompts-file", help="one prompt per line (\\n in a line is a newline)")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    generate.add_argument("--top-k", type=int, default=0, help="0 = off")
    generate.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--batch-size", type=int, default=8)
    generate.add_argument(
        "--chat", action="store_true", help="render each prompt as a user turn with the tokenizer's chat template"
    )
    return _add_export(sub, parser)


def _add_export(sub: Any, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`parser` with the `export` command added to its commands `sub`."""
    export = sub.add_parser(
        "export", help="write a run, RUN/checkpoints/step_N or a Hugging Face folder as a HF folder or keras-hub preset"
    )
    export.add_argument("source")
    export.add_argument("out", help="the folder to write")
    export.add_argument("--to", default="hf", help="hf (a Hugging Face folder) or keras-hub (a keras-hub preset)")
    export.add_argument("--force", action="store_true", help="replace an existing OUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (`cooldown RUN --from 20 logging.log_interval=1`)
    if extra and hasattr(args, "overrides") and not any(item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from theseus.base import backend
    from theseus.config import parse_overrides

    try:
        args.overrides = parse_overrides(getattr(args, "overrides", []))
        run_config = args.config if args.command == "run" else None
        if args.command in ("cooldown", "sweep-cooldowns"):  # a branch runs on its parent's backend
            run_config = str(Path(args.run_dir) / "config.yaml")
        listing = args.command in ("jobs", "configure")  # any backend reads the job classes; JAX's Keras loads quickest
        picked = backend.chosen(args.backend, args.overrides, run_config, pick=not listing)
        backend.select(picked, args.verbose)  # before Keras loads
        return _dispatch(args)
    except Exception as error:
        from theseus.config import exit_status

        return exit_status(error)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("jobs", "configure"):
        return _jobs_or_configure(args)
    from theseus.experiments import runs

    if args.command == "generate":
        from theseus.experiments.completions import print_completions, read_prompts

        prompts = read_prompts(args.prompt, args.prompts_file)
        settings = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
        print_completions(args.source, prompts, args.max_new_tokens, args.batch_size, chat=args.chat, **settings)
        return 0
    if args.command == "export":
        return _export(args)
    if args.command == "cooldown":
        from theseus.experiments.cooldown import cooldown

        options = {name: getattr(args, name) for name in ("fraction", "shape", "steps", "name", "overrides")}
        result = cooldown(args.run_dir, args.point, **options)
        print(f"branch folder: {result['run_dir']} (validation loss {result.get('val_loss', float('nan')):.4f})")
        return 0
    if args.command == "sweep-cooldowns":
        from theseus.experiments.cooldown import sweep

        rows = sweep(args.run_dir, args.every, fraction=args.fraction, shape=args.shape, overrides=args.overrides)
        print((Path(args.run_dir) / "sweep.md").read_text(), end="")
        print(f"wrote {Path(args.run_dir) / 'sweep.csv'} and sweep.png ({len(rows)} branches)")
        return 0
    if args.command == "plot":
        from theseus.training.plot import plot_run

        print(f"wrote {plot_run(args.run_dir)}")
        return 0
    key, fields, values = runs.read_config(args.config, args.overrides)
    runs.launch(key, fields, values, args.outdir, args.name, fresh=args.fresh)
    return 0


def _jobs_or_configure(args: argparse.Namespace) -> int:
    """`jobs` and `configure`, from the job catalog (`theseus.cli.catalog`): no Keras, once it is built."""
    from theseus.base.jobs import config_text
    from theseus.cli import catalog
    from theseus.config import ConfigError, write_atomic

    if args.command == "jobs":
        listing = catalog.listing()
        width = max(map(len, listing), default=0)
        for key in sorted(listing):
            print(f"{key:<{width}}  {listing[key]}")
        return 0
    out = Path(args.out)
    fields, values = catalog.configure(args.job, args.overrides)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it")
    write_atomic(out, config_text(args.job, fields, values))
    missing = [k for k, v in values.items() if v == "???"]
    print(f"wrote {out}" + (f"; set before running: {', '.join(missing)}" if missing else ""))
    return 0


def _export(args: argparse.Namespace) -> int:
    from theseus.experiments.sources import load
    from theseus.training.export import check_target, export

    check_target(args.to)  # before the model loads
    model = load(args.source)
    print(f"wrote {export(model.model, model.tokenizer, args.to, args.out, overwrite=args.force)} ({args.to})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
