"""genwm: learned watermarks that reveal unauthorized personalization of text-to-image models."""
from genwm.models.detector import Detector
from genwm.models.generator import WatermarkGenerator
from genwm.watermarker import Watermarker

__all__ = ["Detector", "Watermarker", "WatermarkGenerator"]
__version__ = "0.1.0"
