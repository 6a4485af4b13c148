"""Phase 1: joint pretraining of the watermark generator G and the detector D.

Alternating updates, GAN-style. D learns to tell x from x_w = x + G(key) (and from marks of
other keys); G learns to make x_w detectable by D after the publishing channel while
paying alpha * max(LPIPS(x, x_w) - p, 0) when it exceeds the perceptual budget p.
"""
import random

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from genwm.channel import ATTACKS, ChannelConfig, PublishingChannel
from genwm.keys import random_bits
from genwm.models import Detector, DetectorConfig, GeneratorConfig, WatermarkGenerator
from genwm.perceptual import load_perceptual


class WatermarkPretraining(pl.LightningModule):
    def __init__(self, generator: dict | None = None, detector: dict | None = None, channel: dict | None = None,
                 perceptual: str = "effnet-lite0", lpips_backbone: str | None = None, budget: float = 0.01,
                 budget_weight: float = 10.0, bit_weight: float = 1.0, lr_g: float = 1e-3, lr_d: float = 1e-3):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = WatermarkGenerator(GeneratorConfig(**(generator or {})))
        self.detector = Detector(DetectorConfig(**(detector or {})))
        self.channel = PublishingChannel(ChannelConfig(**(channel or {})))
        self.perceptual = load_perceptual(perceptual, lpips_backbone)
        self._val = []

    def configure_optimizers(self):
        hp = self.hparams
        return (torch.optim.Adam(self.generator.parameters(), lr=hp.lr_g),
                torch.optim.Adam(self.detector.parameters(), lr=hp.lr_d))

    def detection_losses(self, received: torch.Tensor, n: int, bits: torch.Tensor, other: torch.Tensor):
        """received = channel([x_w; x]). Binary BCE for: own mark (1), clean (0), other key (0);
        plus per-bit BCE on the own mark, which gives D and G a dense signal early on."""
        d = self.detector
        logits = d(received)
        lw, lc = logits[:n], logits[n:]
        sharp, thr = d.sharpness, d.threshold
        own = sharp * (d.agreement(lw, bits) - thr)
        clean = sharp * (d.agreement(lc, bits) - thr)
        foreign = sharp * (d.agreement(lw, other) - thr)
        bce = F.binary_cross_entropy_with_logits
        binary = bce(own, torch.ones_like(own)) + 0.5 * bce(clean, torch.zeros_like(clean)) + 0.5 * bce(foreign, torch.zeros_like(foreign))
        bit = bce(lw, (bits + 1) / 2)
        acc = ((own > 0).float().mean() + (clean < 0).float().mean()) / 2
        return binary, bit, acc

    def training_step(self, x, batch_idx):
        opt_g, opt_d = self.optimizers()
        n, hp = x.shape[0], self.hparams
        bits = random_bits(n, self.generator.config.n_bits).to(x)
        other = random_bits(n, self.generator.config.n_bits).to(x)
        t = self.generator.config.tile
        offset = (random.randrange(t), random.randrange(t))  # D must not rely on where tiles start

        # D step: G fixed.
        with torch.no_grad():
            xw = self.generator.embed(x, bits, offset)
        binary, bit, acc = self.detection_losses(self.channel(torch.cat([xw, x])), n, bits, other)
        opt_d.zero_grad()
        self.manual_backward(binary + hp.bit_weight * bit)
        opt_d.step()

        # G step: D fixed (only G's optimizer steps).
        xw = self.generator.embed(x, bits, offset)
        g_binary, g_bit, _ = self.detection_losses(self.channel(torch.cat([xw, x])), n, bits, other)
        dist = self.perceptual(x, xw)
        over_budget = F.relu(dist - hp.budget).mean()
        loss_g = g_binary + hp.bit_weight * g_bit + hp.budget_weight * over_budget
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()

        self.log_dict({"d/loss": binary, "d/bit": bit, "d/acc": acc, "g/loss": loss_g, "g/perceptual": dist.mean(),
                       "g/over_budget": over_budget}, prog_bar=False)
        self.log("acc", acc, prog_bar=True)
        self.log("lpips", dist.mean(), prog_bar=True)

    def validation_step(self, x, batch_idx):
        """Fixed attacks, fixed keys: logits of marked vs clean crops."""
        g = torch.Generator().manual_seed(1000 + batch_idx)
        bits = random_bits(x.shape[0], self.generator.config.n_bits, g).to(x)
        xw = self.generator.embed(x, bits)
        d = self.detector
        for name in ("clean", "jpeg75", "resize0.5"):
            attack = ATTACKS[name]
            lw = d.sharpness * (d.agreement(d(attack(xw)), bits) - d.threshold)
            lc = d.sharpness * (d.agreement(d(attack(x)), bits) - d.threshold)
            self._val.append((name, lw.cpu(), lc.cpu()))
        self._val.append(("perceptual", self.perceptual(x, xw).cpu(), 10 * torch.log10(1 / (xw - x).pow(2).mean(dim=(1, 2, 3))).cpu()))

    def on_validation_epoch_end(self):
        by = {}
        for name, a, b in self._val:
            by.setdefault(name, ([], []))
            by[name][0].append(a)
            by[name][1].append(b)
        self._val = []
        for name, (a, b) in by.items():
            a, b = torch.cat(a), torch.cat(b)
            if name == "perceptual":
                self.log_dict({"val/perceptual": a.mean(), "val/psnr": b.mean()})
                continue
            labels = [1] * len(a) + [0] * len(b)
            scores = torch.cat([a, b]).numpy()
            self.log_dict({f"val/auc_{name}": float(roc_auc_score(labels, scores)),
                           f"val/acc_{name}": ((a > 0).float().mean() + (b <= 0).float().mean()).item() / 2})
