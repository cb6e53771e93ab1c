from moviola.models.registry import LATTE_SIZES, build_model, model_names

__all__ = ["LATTE_SIZES", "build_model", "model_names"]
