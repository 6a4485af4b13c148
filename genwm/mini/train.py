"""Pretraining the mini text-to-image model on the subject world, in three stages:

1. a captioned image set drawn from the world's pretraining stream (never a subject's seed);
2. the VAE, on those images (L1 reconstruction and a small KL term, as SD's autoencoder);
3. the UNet and the text encoder together, on the VAE's latents (cached once), with 10% of
   captions dropped so that classifier-free guidance works.

Each stage is a LightningModule; the result is a StableDiffusionPipeline folder.
"""
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from genwm.mini import model as M
from genwm.mini import world


@dataclass
class MiniTrainConfig:
    model: M.MiniConfig = field(default_factory=M.MiniConfig)
    n_images: int = 12000
    data_seed: int = 0
    vae_steps: int = 1500
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 3500
    unet_batch_size: int = 32
    unet_lr: float = 5e-4
    caption_dropout: float = 0.1
    seed: int = 0
    accelerator: str = "auto"
    progress: bool = True

    def to_dict(self):
        return asdict(self)


# ---- stage 1: data ------------------------------------------------------------------------------


def world_dataset(n: int, size: int, seed: int, cache: Path | None = None, progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """n captioned images of the pretraining stream (uint8 [n, size, size, 3]), cached as .npz."""
    from tqdm.auto import tqdm

    if cache is not None and cache.is_file():
        data = np.load(cache)
        if data["images"].shape[0] == n and data["images"].shape[1] == size and int(data["seed"]) == seed:
            return data["images"], json.loads(str(data["captions"]))
    images, captions = np.empty((n, size, size, 3), np.uint8), []
    for i in tqdm(range(n), desc="world images", disable=not progress):
        images[i], caption = world.pretraining_example(seed * 10_000_000 + i, size)
        captions.append(caption)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".part.npz")
        np.savez(tmp, images=images, captions=json.dumps(captions), seed=seed)
        tmp.replace(cache)
    return images, captions


class ImageArray(Dataset):
    """uint8 images -> [3, H, W] in [-1, 1], randomly mirrored."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float() / 127.5 - 1
        return x.flip(-1) if torch.rand(()) < 0.5 else x


class ArrayDataModule(pl.LightningDataModule):
    def __init__(self, dataset: Dataset, batch_size: int):
        super().__init__()
        self.dataset, self.batch_size = dataset, batch_size

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=True)


# ---- stage 2: the VAE ---------------------------------------------------------------------------


class VAETraining(pl.LightningModule):
    def __init__(self, vae, lr: float, kl_weight: float, steps: int):
        super().__init__()
        self.vae, self.lr, self.kl_weight, self.steps = vae, lr, kl_weight, steps

    def training_step(self, x, batch_idx):
        posterior = self.vae.encode(x).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        l1 = (recon - x).abs().mean()
        kl = posterior.kl().mean() / x[0].numel()
        loss = l1 + self.kl_weight * kl * x[0].numel()
        self.log_dict({"vae/l1": l1, "vae/kl": kl}, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.vae.parameters(), lr=self.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=self.steps, pct_start=0.05)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ---- stage 3: the UNet and text encoder ---------------------------------------------------------


class LatentDiffusionTraining(pl.LightningModule):
    """SD's training objective: predict the noise added to a latent at a random timestep,
    conditioned on the caption's CLIP embedding (an empty caption 10% of the time)."""

    def __init__(self, unet, text_encoder, scheduler, lr: float, steps: int):
        super().__init__()
        self.unet, self.text_encoder, self.scheduler = unet, text_encoder, scheduler
        self.lr, self.steps = lr, steps

    def training_step(self, batch, batch_idx):
        mean, std, ids = batch
        latents = mean + std * torch.randn_like(std)
        if torch.rand(()) < 0.5:
            latents = latents.flip(-1)  # the VAE is equivariant enough to mirror latents
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        hidden = self.text_encoder(ids, return_dict=False)[0]
        pred = self.unet(noisy, t, hidden, return_dict=False)[0]
        loss = F.mse_loss(pred, noise)
        self.log("unet/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=self.steps, pct_start=0.03)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _trainer(config: MiniTrainConfig, steps: int, root: Path) -> pl.Trainer:
    return pl.Trainer(
        accelerator=config.accelerator,
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        logger=pl.loggers.CSVLogger(root, name="logs"),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=config.progress,
        gradient_clip_val=1.0,
        log_every_n_steps=25,
    )


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, scaling: float, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    vae.eval()
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i : i + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
        dist = vae.encode(x).latent_dist
        means.append(dist.mean * scaling)
        stds.append(dist.std * scaling)
    return torch.cat(means), torch.cat(stds)


def train_vae(config: MiniTrainConfig, images: np.ndarray, root: Path, sample_images: np.ndarray | None = None):
    """Stage 2 alone -> (VAE in eval mode with its latent scaling factor set, that factor,
    reconstruction PSNR in dB on sample_images; default: the first 512 training images)."""
    vae = M.build_vae(config.model)
    vae_module = VAETraining(vae, config.vae_lr, config.kl_weight, config.vae_steps)
    _trainer(config, config.vae_steps, root).fit(vae_module, datamodule=ArrayDataModule(ImageArray(images), config.vae_batch_size))
    vae = vae.cpu().eval()
    sample = torch.from_numpy(images[:512] if sample_images is None else sample_images).permute(0, 3, 1, 2).float() / 255
    scaling = M.latent_scaling_factor(vae, sample)
    vae.register_to_config(scaling_factor=scaling)
    with torch.no_grad():
        recon = vae.decode(vae.encode(sample * 2 - 1).latent_dist.mean).sample
    return vae, scaling, float(10 * math.log10(4 / F.mse_loss(recon.clamp(-1, 1), sample * 2 - 1).item()))


def pretrain_mini(config: MiniTrainConfig, tokenizer_dir, out, work) -> dict:
    """All three stages; writes a StableDiffusionPipeline folder to `out`. -> training record."""
    import time

    from genwm import atomic
    from genwm.personalize.common import atomic_dir

    start = time.time()
    work, out = Path(work), Path(out)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    mc = config.model
    tokenizer = M.load_tokenizer(tokenizer_dir, mc.max_length)
    images, captions = world_dataset(config.n_images, mc.resolution, config.data_seed, work / "world.npz", config.progress)

    vae, scaling, vae_psnr = train_vae(config, images, work / "vae")
    mean, std = encode_latents(vae, images, scaling)
    ids = tokenizer(captions, padding="max_length", max_length=mc.max_length, truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", max_length=mc.max_length, return_tensors="pt").input_ids
    drop = torch.rand(len(ids), generator=torch.Generator().manual_seed(config.seed)) < config.caption_dropout
    ids[drop] = empty  # a fixed 10% of images are uncaptioned: the unconditional model for guidance

    text_encoder, unet = M.build_text_encoder(mc, tokenizer), M.build_unet(mc)
    ldm = LatentDiffusionTraining(unet, text_encoder, M.build_scheduler(mc, "ddpm"), config.unet_lr, config.unet_steps)
    trainer = _trainer(config, config.unet_steps, work / "unet")
    trainer.fit(ldm, datamodule=ArrayDataModule(TensorDataset(mean, std, ids), config.unet_batch_size))
    final_loss = float(trainer.callback_metrics.get("unet/loss", float("nan")))

    pipe = M.assemble_pipeline(vae, text_encoder.cpu().eval(), tokenizer, unet.cpu().eval(), mc)
    record = {
        "format": "genwm-mini-model",
        "version": 1,
        "config": config.to_dict(),
        "latent_scaling_factor": scaling,
        "vae_reconstruction_psnr": vae_psnr,
        "unet_final_loss": final_loss,
        "n_images": len(images),
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet))},
        "torch_version": torch.__version__,
        "wall_seconds": round(time.time() - start),
    }
    with atomic_dir(out, overwrite=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        atomic.write_json(tmp / "genwm_mini.json", record)
    return record
