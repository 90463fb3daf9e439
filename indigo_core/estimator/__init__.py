"""The implicit degradation estimator F (KDSR student layout) and its teacher for training."""

from .kdsr import (
    DegradationEstimator,
    DegradationTeacher,
    EstimatorConfig,
    build_estimator,
    load_estimator,
    save_estimator,
)

__all__ = ["DegradationEstimator", "DegradationTeacher", "EstimatorConfig", "build_estimator",
           "load_estimator", "save_estimator"]
