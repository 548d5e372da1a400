"""Stand-in Audio2Face-3D model folders in NVIDIA's exact format (``a2f-standin``)."""

from a2f_standin.flops import count_flops
from a2f_standin.generate import GENERATOR_VERSION, generate

__all__ = ["GENERATOR_VERSION", "count_flops", "generate"]
