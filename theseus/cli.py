"""The `theseus` command: `jobs`, `configure`, `run`.

    theseus jobs
    theseus configure JOB OUT.yaml [key=value ...]
    theseus run NAME CONFIG OUTDIR [key=value ...]

Bad input (an unknown job or key, a wrong type, an unset `???`, a missing file) is one
line on stderr and exit code 2; nothing is created or overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import theseus  # noqa: F401  (sets the default Keras backend before Keras loads)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="theseus", description="Train language models with Keras 3.")
    parser.add_argument("--backend", choices=["jax", "tensorflow", "torch"], help="Keras backend (default: jax)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    if args.backend:  # before anything imports Keras
        os.environ["KERAS_BACKEND"] = args.backend
    from theseus.config import ConfigError

    try:
        return _dispatch(args)
    except ConfigError as error:
        print(f"theseus: error: {error}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    from theseus.base import run as runs
    from theseus.config import ConfigError, parse_overrides, write_atomic

    if args.command == "jobs":
        registry = runs.jobs()
        width = max(map(len, registry), default=0)
        for key in sorted(registry):
            print(f"{key:<{width}}  {runs.summary(registry[key])}")
        return 0
    if args.command == "configure":
        out = Path(args.out)
        fields, values = runs.configure(args.job, parse_overrides(args.overrides))
        if out.exists() and not args.force:
            raise ConfigError(f"{out} exists; pass --force to overwrite it")
        write_atomic(out, runs.config_text(args.job, fields, values))
        missing = [k for k, v in values.items() if v == "???"]
        print(f"wrote {out}" + (f"; set before running: {', '.join(missing)}" if missing else ""))
        return 0
    key, fields, values = runs.read_config(args.config, parse_overrides(args.overrides))
    runs.launch(key, fields, values, args.outdir, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
