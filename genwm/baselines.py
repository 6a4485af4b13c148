"""invisible-watermark's methods (dwtDct, dwtDctSvd, rivaGan) as baselines for genwm's
benchmarks: embed a bit message, and score an image by the fraction of the message its own
decoder recovers. rivaGan's ONNX weights ship in the package's wheel (needs onnxruntime)."""
import hashlib
import math

import numpy as np
from PIL import Image


class InvisibleWatermark:
    MIN_SIDE = 256  # the package refuses to mark smaller images

    def __init__(self, method: str, n_bits: int = 32, enlarge_small: bool = False):
        """enlarge_small: mark an image under MIN_SIDE px on a copy enlarged by a whole factor
        and shrunk back (the photo keeps its size), and enlarge it the same way to decode;
        otherwise such images cannot be marked, and read as 0 bits recovered."""
        from imwatermark import WatermarkDecoder, WatermarkEncoder

        self.name = self.method = method
        self.n_bits = n_bits
        self.enlarge_small = enlarge_small
        if method == "rivaGan":
            WatermarkEncoder.loadModel()
            WatermarkDecoder.loadModel()
        self.encoder, self.decoder = WatermarkEncoder(), WatermarkDecoder("bits", n_bits)

    def message_for(self, key: str) -> list[int]:
        """A key string's message: the first n_bits bits of its SHA-256."""
        digest = hashlib.sha256(key.encode()).digest()
        return [(digest[i // 8] >> (i % 8)) & 1 for i in range(self.n_bits)]

    def _enlarged(self, img: Image.Image) -> Image.Image:
        factor = math.ceil(self.MIN_SIDE / min(img.size)) if self.enlarge_small else 1
        return img.resize((img.width * factor, img.height * factor), Image.LANCZOS) if factor > 1 else img

    def embed(self, img: Image.Image, message: list[int]) -> Image.Image:
        self.encoder.set_watermark("bits", message)
        rgb = img.convert("RGB")
        bgr = np.ascontiguousarray(np.asarray(self._enlarged(rgb))[..., ::-1])  # the package works in BGR
        marked = Image.fromarray(np.ascontiguousarray(self.encoder.encode(bgr, self.method)[..., ::-1]))
        return marked.resize(rgb.size, Image.LANCZOS) if marked.size != rgb.size else marked

    def bit_accuracy(self, img: Image.Image, messages: list[list[int]]) -> np.ndarray:
        """Fraction of each message's bits the decoder recovers from img (0 where it cannot
        decode at all, e.g. an image too small for the method after an attack)."""
        bgr = np.ascontiguousarray(np.asarray(self._enlarged(img.convert("RGB")))[..., ::-1])
        try:
            bits = np.asarray(self.decoder.decode(bgr, self.method), dtype=int)
        except Exception:
            return np.zeros(len(messages))
        return np.array([np.mean(bits == np.asarray(m)) for m in messages])
