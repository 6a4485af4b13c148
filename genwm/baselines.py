"""invisible-watermark's methods (dwtDct, dwtDctSvd, rivaGan) as baselines for genwm's
benchmarks: embed a bit message, and score an image by the fraction of the message its own
decoder recovers. rivaGan's ONNX weights ship in the package's wheel (needs onnxruntime)."""
import hashlib

import numpy as np
from PIL import Image


class InvisibleWatermark:
    def __init__(self, method: str, n_bits: int = 32):
        from imwatermark import WatermarkDecoder, WatermarkEncoder

        self.name = self.method = method
        self.n_bits = n_bits
        if method == "rivaGan":
            WatermarkEncoder.loadModel()
            WatermarkDecoder.loadModel()
        self.encoder, self.decoder = WatermarkEncoder(), WatermarkDecoder("bits", n_bits)

    def message_for(self, key: str) -> list[int]:
        """A key string's message: the first n_bits bits of its SHA-256."""
        digest = hashlib.sha256(key.encode()).digest()
        return [(digest[i // 8] >> (i % 8)) & 1 for i in range(self.n_bits)]

    def embed(self, img: Image.Image, message: list[int]) -> Image.Image:
        self.encoder.set_watermark("bits", message)
        bgr = np.ascontiguousarray(np.asarray(img.convert("RGB"))[..., ::-1])  # the package works in BGR
        return Image.fromarray(np.ascontiguousarray(self.encoder.encode(bgr, self.method)[..., ::-1]))

    def bit_accuracy(self, img: Image.Image, messages: list[list[int]]) -> np.ndarray:
        """Fraction of each message's bits the decoder recovers from img (0 where it cannot
        decode at all, e.g. an image too small for the method after an attack)."""
        bgr = np.ascontiguousarray(np.asarray(img.convert("RGB"))[..., ::-1])
        try:
            bits = np.asarray(self.decoder.decode(bgr, self.method), dtype=int)
        except Exception:
            return np.zeros(len(messages))
        return np.array([np.mean(bits == np.asarray(m)) for m in messages])
