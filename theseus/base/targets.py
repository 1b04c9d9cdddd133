"""What a training target means beyond a token id."""

IGNORE_INDEX = -100
"""A target equal to this is padding or a masked (e.g. prompt) token: it adds no loss
(Hugging Face's and PyTorch's convention, so their labels carry over unchanged)."""
