"""Models: logical axes, the `Module` base, shared layers and one file per family."""
