"""`python -m theseus.recipes JOB ...`: run a registered job with fire-style flags."""
