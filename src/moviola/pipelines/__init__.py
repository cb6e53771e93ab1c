from moviola.pipelines.generate import Pipeline, load_model, load_pipeline

__all__ = ["Pipeline", "load_model", "load_pipeline"]
