"""A small local package shipped with ``own_code.py``'s functions (``include=["own_code_lib"]``)."""

from own_code_lib.stats import normalised

__all__ = ["normalised"]
