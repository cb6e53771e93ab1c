"""The denoisers, one folder per family, behind one protocol (base.py) and one registry (registry.py)."""
from moviola.models.registry import FAMILIES, build_model

__all__ = ["FAMILIES", "build_model"]
