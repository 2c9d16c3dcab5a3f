"""fernoise: facial expression recognition with periodic and dynamic feature-level noise injection.

Hong & Jeong, "Dynamic Noise Injection for Facial Expression Recognition In-the-Wild", CVPR 2023 workshops.
"""
from fernoise.models import build_model, inject_noise
from fernoise.noise import AutoReLU, CliffReLU, NoiseController, PeriodicSchedule, SignFlip, sync_autorelu
from fernoise.version import __version__

__all__ = [
    "AutoReLU",
    "CliffReLU",
    "NoiseController",
    "PeriodicSchedule",
    "SignFlip",
    "build_model",
    "inject_noise",
    "sync_autorelu",
]


def __getattr__(name: str):
    # Predictor pulls in OpenCV; import it only when asked for.
    if name == "Predictor":
        from fernoise.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'fernoise' has no attribute {name!r}")
