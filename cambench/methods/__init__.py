"""CAM methods, registered under their config names. Importing this package registers them all."""

from cambench.methods import gradcam  # noqa: F401  (registers the method)
from cambench.methods.base import METHODS, CAMMethod, CAMOutput, build_method, register

__all__ = ["METHODS", "CAMMethod", "CAMOutput", "build_method", "register"]
