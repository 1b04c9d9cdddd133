"""Run a registered job: `python -m theseus.recipes gpt/train/pretrain [--flags]`.

    --config FILE    a YAML (full, from `theseus configure`, or partial, like recipes/gpt/*.yaml)
    --out DIR        where runs live (default: runs)
    --name NAME      the run's folder name (default: the job key with dashes)
    --backend NAME   jax (default), tensorflow or torch
    --fresh          start over: move an existing run folder aside instead of resuming it
    --verbose        let the frameworks' start-up lines through to stderr
    --any.config.key=VALUE   override one config value, e.g. --training.tokens=2e6

Running the same command again resumes the run from its newest checkpoint.
"""

from __future__ import annotations

import sys

import theseus  # noqa: F401  (sets the default Keras backend before Keras loads)


def main(
    job: str,
    config: str | None = None,
    out: str = "runs",
    name: str | None = None,
    backend: str | None = None,
    fresh: bool = False,
    verbose: bool = False,
    **overrides,
) -> None:
    from theseus.base import backend as backends

    overrides = {k.replace(".", "/"): v for k, v in overrides.items()}
    try:
        backends.select(backends.chosen(backend, overrides, config), verbose)  # before Keras is imported
        _launch(job, config, out, name or job.replace("/", "-"), fresh, overrides)
    except Exception as error:
        from theseus.config import exit_status

        sys.exit(exit_status(error))


def _launch(job: str, config: str | None, out: str, name: str, fresh: bool, overrides: dict) -> None:
    from theseus.config import resolve
    from theseus.experiments import runs

    if config is not None:
        key, fields, values = runs.read_config(config, None, job=job)
    else:
        key, fields, values = job, runs.table(runs.job_class(job)), {}
    values = resolve(fields, values, _as_text(fields, overrides))
    runs.launch(key, fields, values, out, name, fresh=fresh)


def _as_text(fields, overrides: dict) -> dict:
    """Fire has already parsed each flag's value; a `str` field wants the text back."""
    return {
        k: (str(v) if k in fields and fields[k].type is str and not isinstance(v, str) else v)
        for k, v in overrides.items()
    }


if __name__ == "__main__":
    import fire

    fire.Fire(main)
