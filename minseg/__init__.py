"""minseg: mineral image segmentation with deep ensembles and prospectivity mapping on Ray."""

__version__ = "0.1.0"
