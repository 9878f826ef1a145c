from .pipeline_hydra import HydraPipeline

__all__ = ["HydraPipeline"]
