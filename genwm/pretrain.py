"""Phase 1: joint pretraining of the watermark generator G and the detector D.

Alternating updates, GAN-style. D learns to tell x from x_w = x + G(key) (and from marks of
other keys); G learns to make x_w detectable by D after the publishing channel while
paying alpha * max(LPIPS(x, x_w) - p, 0) when it exceeds the perceptual budget p.
"""
import random
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from genwm.channel import ATTACKS, ChannelConfig, PublishingChannel, vae_round_trip
from genwm.keys import random_bits
from genwm.models import Detector, DetectorConfig, GeneratorConfig, WatermarkGenerator
from genwm.perceptual import load_perceptual


def key_overlap(tiles: torch.Tensor) -> torch.Tensor:
    """Mean squared correlation between different keys' tiles [B, 3, T, T]: what one key's mark
    gives away to another key's template. Random tiles give about 1 / (3 T^2)."""
    t = tiles.flatten(1)
    t = t - t.mean(dim=1, keepdim=True)
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    gram = t @ t.T
    off = ~torch.eye(len(t), dtype=torch.bool, device=t.device)
    return gram[off].pow(2).mean()


class WatermarkPretraining(pl.LightningModule):
    """G and D, alternating updates. D's template network *is* G (shared weights, updated only
    by G's optimizer): D learns where to look for the mark, G what to draw."""

    def __init__(self, generator: dict | None = None, detector: dict | None = None, channel: dict | None = None,
                 perceptual: str = "effnet-lite0", lpips_backbone: str | None = None, budget: float = 0.01,
                 budget_weight: float = 10.0, foreign_weight: float = 0.5, lr_g: float = 2e-4, lr_d: float = 1e-3,
                 detector_warmup: int = 300, channel_ramp: int = 600, decorrelation_weight: float = 0.0,
                 val_attacks: tuple = ("clean", "jpeg75", "resize0.5")):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = WatermarkGenerator(GeneratorConfig(**(generator or {})))
        self.detector = Detector(DetectorConfig(template=self.generator.config.to_dict(), **(detector or {})))
        self.detector.templates = self.generator
        self.channel = PublishingChannel(ChannelConfig(**(channel or {})))
        self.perceptual = load_perceptual(perceptual, lpips_backbone)
        unknown = [a for a in val_attacks if a not in ATTACKS and a != "vae"]
        if unknown or ("vae" in val_attacks and self.channel.vae is None):
            raise ValueError(f"val_attacks: {unknown or ['vae']} unknown; choose from {sorted(ATTACKS)} and 'vae' "
                             "(the channel's VAE round trip; needs channel.vae and channel.p_vae > 0)")
        self._val = []

    def detector_parameters(self):
        shared = {id(p) for p in self.generator.parameters()}
        return [p for p in self.detector.parameters() if id(p) not in shared]

    def configure_optimizers(self):
        hp = self.hparams
        return (torch.optim.Adam(self.generator.parameters(), lr=hp.lr_g),
                torch.optim.Adam(self.detector_parameters(), lr=hp.lr_d))

    def detection_losses(self, received: torch.Tensor, own: torch.Tensor, other: torch.Tensor):
        """received = channel([x_w; x]); own, other: template tiles of the mark's key and of
        another key. BCE for: the key's mark (1), clean (0), and the mark read with the other
        key (0), which keeps the keys' templates apart."""
        n = own.shape[0]
        marked = self.detector.template_logits(received[:n], torch.stack([own, other], dim=1))
        clean = self.detector.template_logits(received[n:], own[:, None])[:, 0]
        own_logit, foreign = marked[:, 0], marked[:, 1]
        bce = F.binary_cross_entropy_with_logits
        w = self.hparams.foreign_weight
        loss = (bce(own_logit, torch.ones_like(own_logit)) + (1 - w) * bce(clean, torch.zeros_like(clean))
                + w * bce(foreign, torch.zeros_like(foreign)))
        acc = ((own_logit > 0).float().mean() + (clean < 0).float().mean()) / 2
        return loss, acc

    def iteration(self) -> int:
        """Training batches so far (restored on resume); Lightning's global_step counts
        optimizer steps, which differ between the warm-up and the rest."""
        return self.trainer.fit_loop.epoch_loop.total_batch_idx if self._trainer is not None else 0

    def training_step(self, x, batch_idx):
        opt_g, opt_d = self.optimizers()
        n, hp = x.shape[0], self.hparams
        it = self.iteration()
        # The curriculum: D first learns to find marks in undistorted photos, then the publishing
        # channel's distortions fade in over channel_ramp iterations; G waits detector_warmup.
        intensity = min(1.0, it / hp.channel_ramp) if hp.channel_ramp > 0 else 1.0
        bits = random_bits(n, self.generator.config.n_bits).to(x)
        other = random_bits(n, self.generator.config.n_bits).to(x)
        t = self.generator.config.tile
        offset = (random.randrange(t), random.randrange(t))  # the mark may start anywhere

        # D step: G fixed.
        with torch.no_grad():
            tiles = self.generator(torch.cat([bits, other]))
            pattern = self.generator.render(tiles[:n], x.shape[-2], x.shape[-1], 1.0, offset)
            received = self.channel(torch.cat([(x + pattern).clamp(0, 1), x]), intensity)
        loss_d, acc = self.detection_losses(received, tiles[:n], tiles[n:])
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        self.log_dict({"d/loss": loss_d, "acc": acc, "channel": intensity}, prog_bar=True)

        # G step: D's own parameters fixed (only G's optimizer steps). G waits while D first
        # learns to find G's random initial marks: a G chasing a blind D learns only noise.
        opt_g.zero_grad()
        if it >= hp.detector_warmup:
            tiles = self.generator(torch.cat([bits, other]))
            pattern = self.generator.render(tiles[:n], x.shape[-2], x.shape[-1], 1.0, offset)
            xw = (x + pattern).clamp(0, 1)
            loss_det, _ = self.detection_losses(self.channel(torch.cat([xw, x]), intensity), tiles[:n], tiles[n:])
            dist = self.perceptual(x, xw)
            over_budget = F.relu(dist - hp.budget).mean()
            overlap = key_overlap(tiles)
            loss_g = loss_det + hp.budget_weight * over_budget + hp.decorrelation_weight * overlap
            self.manual_backward(loss_g)
            self.log_dict({"g/loss": loss_g, "g/over_budget": over_budget, "g/key_overlap": overlap})
            self.log("lpips", dist.mean(), prog_bar=True)
        opt_g.step()  # without gradients (warm-up) Adam leaves G as it is

    def validation_step(self, x, batch_idx):
        """Fixed attacks, fixed keys: logits of marked vs clean crops."""
        g = torch.Generator().manual_seed(1000 + batch_idx)
        bits = random_bits(x.shape[0], self.generator.config.n_bits, g).to(x)
        xw = self.generator.embed(x, bits)
        for name in self.hparams.val_attacks:
            attack = (lambda im: vae_round_trip(self.channel.vae, im)) if name == "vae" else ATTACKS[name]
            self._val.append((name, self.detector.logit(attack(xw), bits).cpu(), self.detector.logit(attack(x), bits).cpu()))
        # the key's own mark vs another key's mark, read with the key: are keys told apart?
        other = self.generator.embed(x, random_bits(x.shape[0], self.generator.config.n_bits, g).to(x))
        self._val.append(("other_key", self.detector.logit(xw, bits).cpu(), self.detector.logit(other, bits).cpu()))
        self._val.append(("perceptual", self.perceptual(x, xw).cpu(), 10 * torch.log10(1 / (xw - x).pow(2).mean(dim=(1, 2, 3))).cpu()))

    def on_validation_epoch_end(self):
        by = {}
        for name, a, b in self._val:
            by.setdefault(name, ([], []))
            by[name][0].append(a)
            by[name][1].append(b)
        self._val = []
        aucs = []
        for name, (a, b) in by.items():
            a, b = torch.cat(a), torch.cat(b)
            if name == "perceptual":
                self.log_dict({"val/perceptual": a.mean(), "val/psnr": b.mean()})
                continue
            labels = [1] * len(a) + [0] * len(b)
            aucs.append(float(roc_auc_score(labels, torch.cat([a, b]).numpy())))
            self.log_dict({f"val/auc_{name}": aucs[-1],
                           f"val/acc_{name}": ((a > 0).float().mean() + (b <= 0).float().mean()).item() / 2})
        # What selects the exported epoch (G/D training is adversarial and not monotone):
        # robustness and key separation alike.
        self.log("val/score", sum(aucs) / len(aucs))


# ---- the run: config file -> Lightning trainer -> genwm checkpoint -------------------------------

DEFAULT_CONFIG = {
    "out": "checkpoints/genwm-base",
    "run_dir": "runs/pretrain",  # Lightning's checkpoints (to resume from) and CSV logs
    "seed": 0,
    "data": {},  # PhotoCropDataModule arguments
    "model": {},  # WatermarkPretraining arguments
    "trainer": {"max_epochs": 10, "accelerator": "auto"},  # pl.Trainer arguments
    "calibration": {"dirs": None, "n_keys": 32, "seed": 0},  # None: the data's val_dirs
    # DetectorConfig options set on the selected detector after training, before its final
    # validation, export and calibration: how it reads photos (e.g. whiten), not how it trains
    "read": {},
}


def load_pretrain_config(path=None, **overrides) -> dict:
    """DEFAULT_CONFIG updated section by section from a YAML file, then from overrides
    (dotted names, e.g. {"trainer.max_steps": 20}; None values ignored)."""
    import copy

    from genwm.config_file import read_config_file

    config = copy.deepcopy(DEFAULT_CONFIG)
    if path is not None:
        data = read_config_file(path)
        unknown = sorted(set(data) - set(DEFAULT_CONFIG))
        if unknown:
            raise ValueError(f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_CONFIG)}")
        for k, v in data.items():
            if isinstance(config[k], dict):
                config[k].update(v or {})
            else:
                config[k] = v
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, name = dotted.partition(".")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    return config


def pretrain(config: dict, resume: bool = False, progress: bool = True) -> dict:
    """Phase 1 from a config (load_pretrain_config), writing a genwm checkpoint to config["out"]
    and its calibration. resume=True continues from the run folder's last Lightning checkpoint.
    -> the checkpoint's metadata."""
    from pathlib import Path

    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    from genwm.checkpoint import save_calibration, save_checkpoint
    from genwm.data import PhotoCropDataModule

    try:  # before training, not after it
        DetectorConfig.check_options(config["read"])
    except ValueError as e:
        raise ValueError(f"read: {e}") from None
    pl.seed_everything(config["seed"], workers=True, verbose=False)
    run_dir, out = Path(config["run_dir"]), Path(config["out"])
    model = WatermarkPretraining(**config["model"])
    data_args = dict(config["data"])
    data_args.setdefault("canonical_size", model.generator.config.canonical_size)
    data = PhotoCropDataModule(**data_args)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"{last}: nothing to resume from (run without --resume to start)")
    if not resume and last.is_file():
        raise ValueError(f"{run_dir}: holds an earlier run; pass --resume to continue it or choose another run_dir")
    trainer = pl.Trainer(
        default_root_dir=run_dir,
        logger=CSVLogger(run_dir, name="logs"),
        # last.ckpt every epoch (an interrupted run resumes from it) and the epoch with the best
        # val/score (mean AUC over val_attacks and own vs other key), the one exported
        callbacks=[ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=1, monitor="val/score", mode="max")],
        enable_progress_bar=progress,
        enable_model_summary=progress,
        log_every_n_steps=10,
        **config["trainer"],
    )
    started = time.time()
    trainer.fit(model, datamodule=data, ckpt_path=last if resume else None, weights_only=True)

    best = trainer.checkpoint_callback.best_model_path
    selected = torch.load(best, map_location="cpu", weights_only=True)
    model.load_state_dict(selected["state_dict"])
    for name, value in config["read"].items():
        setattr(model.detector.config, name, value)
    final = {k: float(v) for k, v in trainer.validate(model, datamodule=data, verbose=False)[0].items()}
    metadata = {
        "phase": 1,
        "perceptual": model.hparams.perceptual,
        "budget": model.hparams.budget,
        "channel": model.channel.config.to_dict(),
        "hparams": dict(model.hparams),
        "data": {k: (list(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in data_args.items()},
        "train_images": len(data.train_set.images),
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "selected_epoch": selected["epoch"],
        "fit_wall_seconds": round(time.time() - started),  # this call's; a resumed run counts anew
        "seed": config["seed"],
        "validation": final,  # of the exported detector, read options included
        "read": dict(config["read"]),
        "torch_version": torch.__version__,
    }
    if model.hparams.perceptual == "lpips-alex-random":
        metadata["warning"] = "trained with a random-backbone LPIPS: the perceptual budget means little"
    generator, detector = model.generator.cpu().eval(), model.detector.cpu().eval()
    save_checkpoint(out, generator=generator, detector=detector, metadata=metadata)
    cal = config["calibration"]
    dirs = cal.get("dirs") or data_args["val_dirs"]
    save_calibration(out, calibrate(detector, dirs, n_keys=cal.get("n_keys", 32), seed=cal.get("seed", 0), progress=progress))
    return metadata


def calibrate(detector, dirs, n_keys: int = 32, seed: int = 0, alpha_image: float = 0.01, progress: bool = True) -> dict:
    """The calibration of a phase-1 detector: its null distribution on clean photos (folders
    `dirs`, never trained on) under n_keys random keys and each fixed attack."""
    from tqdm.auto import tqdm

    from genwm.calibration import make_calibration, null_logits
    from genwm.data import list_images
    from genwm.images import load_image, to_float_rgb

    files = list_images(dirs)
    if not files:
        raise ValueError(f"no images to calibrate on in {', '.join(map(str, dirs))}")
    images = (torch.from_numpy(to_float_rgb(load_image(f).image)).permute(2, 0, 1) for f in files)
    bar = tqdm(total=len(files), desc="calibrate", disable=not progress)
    null = null_logits(detector, images, n_keys=n_keys, seed=seed, progress=lambda: bar.update(1))
    bar.close()
    return make_calibration(
        null,
        alpha_image=alpha_image,
        null_source="clean photos never trained on, random keys, each fixed attack",
        null_images=[str(f) for f in files],
        n_keys=n_keys,
        attacks=list(ATTACKS),
    )
