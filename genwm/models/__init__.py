from genwm.models.detector import Detector, DetectorConfig
from genwm.models.generator import GeneratorConfig, WatermarkGenerator

__all__ = ["Detector", "DetectorConfig", "GeneratorConfig", "WatermarkGenerator"]
