"""Models: logical axes, the `Module` base, shared layers and one file per family."""

# The families first: a family module (like the tutorial's) may import `theseus.model.huggingface`,
# which builds on them, so importing that module directly must not be what starts the package.
from theseus.model import models  # noqa: E402,F401
