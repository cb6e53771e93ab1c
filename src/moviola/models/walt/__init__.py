"""W.A.L.T, the window-attention latent transformer: the model (model.py) and its layers (blocks.py)."""
from moviola.models.walt.model import Walt

__all__ = ["Walt"]
