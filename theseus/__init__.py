"""theseus: train decoder-only language models with Keras 3 on JAX, TensorFlow or PyTorch."""

import os

# In a script, JAX is theseus's default backend; an explicit KERAS_BACKEND always wins. This must
# run before Keras is imported, which is why `import theseus` comes first in entry points.
KERAS_BACKEND_GIVEN = "KERAS_BACKEND" in os.environ
"""Whether the user named a backend: if not, `topology/backend: auto` picks one when a command starts."""
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (pulled in by keras-hub, tfds) is chatty

__version__ = "0.1.0"
