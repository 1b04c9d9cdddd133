"""Helpers shared by tests (import as `from support import run_command`; a module named
`conftest` is ambiguous once test folders have their own)."""

import os
import subprocess


def run_command(args, cwd=None, env=None, timeout=600, check=False):
    """Run `python -m ...`/`theseus ...` as a user would, in a subprocess; its CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    result = subprocess.run(
        args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def needs_jax(reason: str = "keras.distribution shards variables on JAX only"):
    """Skip a test on the other backends (when the marked subset runs there) for `reason`."""
    import keras
    import pytest

    return pytest.mark.skipif(keras.backend.backend() != "jax", reason=reason)
