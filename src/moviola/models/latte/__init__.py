"""Latte, the video DiT: the model and its layouts (model.py) and the blocks they compose (blocks.py)."""
from moviola.models.latte.model import (LATTE_CLASSES, Latte, LatteFactorizedAttention, LatteFactorizedHeads,
                                        LatteLateFusion)

__all__ = ["LATTE_CLASSES", "Latte", "LatteFactorizedAttention", "LatteFactorizedHeads", "LatteLateFusion"]
