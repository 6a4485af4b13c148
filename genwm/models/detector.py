"""D: an image of any size and a key -> the probability that the image carries the key's mark.

D is a keyed matched filter with a learned front end:
1. a small CNN (the extractor) turns the image into a residual where the mark stands out and
   the photo's own content is suppressed (for a row-constant mark, `row_window` replaces it
   with a fixed one: the image's row means, high-passed along the height);
2. at each candidate scale, the residual is resampled so the mark's period becomes the tile
   size T, cut into blocks of a few periods, and each block is folded (its periods averaged)
   into one T x T tile: the mark adds up coherently, the photo does not;
3. each folded block is circularly cross-correlated (FFT) with the key's template tile, so any
   shift (a crop) is found; a block's evidence is the correlation peak in standard deviations
   of its correlation map (with `whiten`, each frequency first divided by this image's RMS
   there, so the photo's busiest frequencies count least);
4. the blocks' correlation maps are summed (the mark has one phase over the whole photo) and
   also their peaks averaged (robust to a slightly wrong scale); the best scale is taken, and
   an affine map gives a logit.
A subject's detector from phase 2 may instead read at one scale and a weighing of the shifts,
where that subject's personalized models were found to draw the mark, and a weighing of the
template's frequencies by how much of each those models keep (`located`).

The template comes from a key -> tile network of the generator's architecture; in phase 1 it
is the generator itself (D looks for what G draws), in phase 2 it may adapt to what survives
personalization. Keys' tiles are independent noise through one filter, so a mark of another
key correlates with this key's template no more than photo content does: its correlation map
has no peak that stands out, which is what tells keys apart.
"""
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from genwm.models.generator import GeneratorConfig, WatermarkGenerator, cycles_per_tile, pattern_scale


@dataclass
class DetectorConfig:
    template: dict = field(default_factory=lambda: GeneratorConfig().to_dict())  # the key -> tile network
    width: int = 16  # extractor channels
    depth: int = 3  # extractor convolutions
    block_periods: int = 4  # a block folds this many periods each way
    scale_range: tuple = (0.45, 1.6)  # mark scales searched, relative to canonical
    scale_step: float = 1.05  # ratio between neighbouring scales
    refine_steps: int = 5  # finer scales searched each side of the best one (see Detector.evidence)
    # When reading whole photos (as refine): at each coarse scale, look for a scale error of up
    # to half a step, in this many steps each way, by shifting each block's correlation map by
    # the drift such an error causes at the block's position, and read the scale found too
    # (see Detector.evidence); 0: off.
    drift_steps: int = 0
    coherent: bool = True  # also sum the blocks' correlation maps (False: per-block peaks only, the first detector)
    max_side: int = 1024  # longer sides are centre-cropped after scale normalisation
    # Add a fixed high-pass (image minus its 3x3 blur) to the learned residual: the matched
    # filter then works from the first step, where small images give a randomly initialised
    # extractor too little signal to learn from (the mini world's 64 px images).
    highpass: bool = False
    # Divide the folded blocks' spectrum, frequency by frequency, by its RMS over the image's
    # blocks and channels before correlating (phase correlation's whitening, estimated per
    # image): photo content is far from white, and a frequency where this photo is busy then
    # counts less than one where the mark stands out.
    whiten: bool = False
    # For a row-constant mark (GeneratorConfig.rows) only: 0 keeps the learned front end; k > 0
    # (odd) replaces it with a fixed one, the grey image's mean along each row minus that
    # profile's own moving average over k rows, the same for every column and channel. Row
    # means are all a row-constant mark can be read from; the extractor, learned for a 2-D mark,
    # favours the highest frequencies. Which of the two reads personalized models' images
    # better differs from subject to subject (docs/BENCHMARKS.md, "A front end made for the
    # profile").
    row_window: int = 0
    # Where one subject's personalized models draw the mark, as phase 2 found it (genwm.finetune
    # .locate): {"scale": relative to canonical, "weights": T*T numbers, one per shift of the
    # tile at that scale}. When set, D reads the key's summed correlation at that scale as
    # z-scores over the tile's shifts and weighs them (a linear discriminant over shifts,
    # normalised), instead of searching every shift and scale: generated images keep a few
    # tenths of the mark at best, and the best of thousands of looks at a clean image stands
    # out more than that (docs/BENCHMARKS.md, the mini world). None: search (photos, phase 1).
    # "null_scales": where the key test's null keys (genwm.keys.null_key_bits) were located by
    # the same procedure on the same images, one scale each; their weights are the detector's
    # `null_weights` buffer (see Detector.key_evidence). "covariates": name -> 1 + len(null_scales)
    # numbers, the mean evidence under the key and each null key of images that share what the
    # suspect images share with the keys without a mark (the subject's photos, the base model's
    # images), which the key test regresses out (genwm.calibration.key_test). "rings": T/2 + 1
    # gains, one per ring of the tile's frequencies (cycles per tile, the larger of |kx| and
    # |ky|), applied to the summed correlation's spectrum before the z-scores, the same for
    # every key, the null keys too: where the models' images carry the mark best, as phase 2
    # fitted it (genwm.finetune.fit_rings). Absent: every ring counts as the template has it.
    located: dict | None = None

    def __post_init__(self):
        self.scale_range = tuple(self.scale_range)
        if self.located is not None:
            weights = [float(w) for w in self.located["weights"]]
            if len(weights) != self.tile**2 or not any(weights):
                raise ValueError(f"located weights: expected {self.tile ** 2} numbers, not all zero (one per shift of the {self.tile}-px tile), got {len(weights)}")
            located = {"scale": float(self.located["scale"]), "weights": weights}
            if self.located.get("null_scales") is not None:
                located["null_scales"] = [float(v) for v in self.located["null_scales"]]
            if self.located.get("rings") is not None:
                rings = [float(g) for g in self.located["rings"]]
                if len(rings) != self.tile // 2 + 1 or min(rings) < 0 or not any(rings):
                    raise ValueError(f"located rings: expected {self.tile // 2 + 1} gains >= 0, not all zero (one per ring of the {self.tile}-px tile's frequencies), got {len(rings)}")
                located["rings"] = rings
            if self.located.get("covariates"):
                n_keys = 1 + len(located.get("null_scales", []))
                located["covariates"] = {str(name): [float(v) for v in values] for name, values in self.located["covariates"].items()}
                for name, values in located["covariates"].items():
                    if len(values) != n_keys:
                        raise ValueError(f"located covariate {name!r}: expected one number for the key and one for each of its {n_keys - 1} null keys, got {len(values)}")
            self.located = located
        if isinstance(self.template, GeneratorConfig):
            self.template = self.template.to_dict()
        if self.row_window:
            if self.row_window < 3 or self.row_window % 2 == 0:
                raise ValueError(f"row_window: an odd number of rows >= 3 (or 0 for the learned front end), got {self.row_window}")
            if not self.generator_config.rows:
                raise ValueError("row_window reads row means, which only a row-constant mark (template rows: true) survives")

    @property
    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(**self.template)

    @property
    def n_bits(self) -> int:
        return self.generator_config.n_bits

    @property
    def tile(self) -> int:
        return self.generator_config.tile

    @property
    def canonical_size(self) -> int:
        return self.generator_config.canonical_size

    def scales(self) -> list[float]:
        lo, hi = self.scale_range
        k_lo, k_hi = math.ceil(math.log(lo) / math.log(self.scale_step)), math.floor(math.log(hi) / math.log(self.scale_step))
        return [self.scale_step**k for k in range(k_lo, k_hi + 1)]

    def drifts(self) -> list[float]:
        """Relative scale errors tried at each coarse scale: half a step each way, and one drift
        step more, so that a peak halfway between two coarse scales is seen whole from both."""
        n = self.drift_steps
        half = math.sqrt(self.scale_step) - 1
        return [half * j / n for j in range(-n - 1, n + 2)] if n else [0.0]

    def to_dict(self):
        return asdict(self)

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Raise ValueError naming any key of options that is not a DetectorConfig field."""
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{', '.join(unknown)} is not a detector option")


def block_grid(h: int, w: int, period: int, block: int) -> tuple[int, int, int, int] | None:
    """The blocks fold_blocks cuts an h x w image into: (block height, width, rows, columns);
    None if the image holds no whole period."""
    bh, bw = min(block, h // period * period), min(block, w // period * period)
    if bh == 0 or bw == 0:
        return None
    return bh, bw, h // bh, w // bw


def block_centres(h: int, w: int, period: int, block: int) -> torch.Tensor:
    """[B, 2] (y, x) of fold_blocks' blocks' centres, in pixels from the centre of the area
    they cover, in fold_blocks' order."""
    bh, bw, nh, nw = block_grid(h, w, period, block)
    y = (torch.arange(nh) + 0.5 - nh / 2) * bh
    x = (torch.arange(nw) + 0.5 - nw / 2) * bw
    return torch.stack(torch.meshgrid(y, x, indexing="ij"), dim=-1).reshape(-1, 2)


def fold_blocks(residual: torch.Tensor, period: int, block: int) -> torch.Tensor | None:
    """[N, C, H, W] -> [N, blocks, C, period, period]: each block's periods averaged. None if
    the image holds no whole period."""
    n, c, h, w = residual.shape
    grid = block_grid(h, w, period, block)
    if grid is None:
        return None
    bh, bw, nh, nw = grid
    x = residual[..., : nh * bh, : nw * bw].reshape(n, c, nh, bh // period, period, nw, bw // period, period)
    return x.mean(dim=(3, 6)).permute(0, 2, 4, 1, 3, 5).reshape(n, nh * nw, c, period, period)


def unit(x: torch.Tensor, dims) -> torch.Tensor:
    x = x - x.mean(dim=dims, keepdim=True)
    return x / x.pow(2).sum(dim=dims, keepdim=True).clamp_min(1e-12).sqrt()


class Detector(nn.Module):
    def __init__(self, config: DetectorConfig | None = None):
        super().__init__()
        self.config = config = config or DetectorConfig()
        layers, c_in = [], 3
        for i in range(0 if config.row_window else config.depth):
            last = i == config.depth - 1
            layers.append(nn.Conv2d(c_in, 3 if last else config.width, 3, padding=1, padding_mode="reflect"))
            if not last:
                layers.append(nn.GELU())
            c_in = config.width
        self.extractor = nn.Sequential(*layers)
        self.templates = WatermarkGenerator(config.generator_config)
        # Block evidence under the null is a peak over T*T shifts: about 3.3 sd for T = 32.
        self.null_peak = nn.Parameter(torch.tensor(3.3))
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(1.0))
        if config.located is not None and "null_scales" in config.located:
            self.register_buffer("null_weights", torch.zeros(len(config.located["null_scales"]), config.tile**2))

    @classmethod
    def for_generator(cls, generator: WatermarkGenerator, **options) -> "Detector":
        """A detector whose template is a copy of this generator."""
        detector = cls(DetectorConfig(template=generator.config.to_dict(), **options))
        detector.templates.load_state_dict(generator.state_dict())
        return detector

    def evidence(self, images: torch.Tensor, templates: torch.Tensor, refine: bool | None = None) -> torch.Tensor:
        """images [N, 3, H, W] in [0, 1] at canonical scale, templates [N or 1, K, 3, T, T] ->
        evidence [N, K]: how far each template's correlation peak stands out, in standard
        deviations, at the best scale. The residual is computed once for all K and scales.

        refine (default: when no gradients are needed) searches finer scales next to each
        image's best one: coherent pooling over a whole photo needs the scale to within a few
        tenths of a percent; training crops hold a block or two and do without. The true scale
        lies between the best coarse scale and its better neighbour, so 2 * refine_steps finer
        scales go to that side only. With drift_steps, where the coherent peak is best is also
        located to within a drift step, and that scale and its neighbours half a drift step away
        are read too: on a weak mark, the coarse scales' own curve may not rise near it at all."""
        residual = self.residual(images)
        spectrum = self.template_spectrum(templates)
        located = self.config.located
        if located is not None:
            k = spectrum.shape[1]
            weights = torch.tensor(located["weights"], device=residual.device).expand(k, -1)
            rings = torch.tensor(located["rings"], device=residual.device).expand(k, -1) if "rings" in located else None
            return self.read_located(residual, spectrum, [located["scale"]] * k, weights, rings)
        scales = self.config.scales()
        refine = refine if refine is not None else not torch.is_grad_enabled()
        drifts = self.config.drifts() if refine else [0.0]
        stats = self.statistics_at(residual, spectrum, scales, drifts)
        if stats is None:
            raise ValueError(f"image of {tuple(images.shape[-2:])} px is smaller than one period of the mark")
        coherent, incoherent, height = stats
        # Evidence from the coarse scales as they are: the drifts only say where to look (read
        # as evidence, their many extra hypotheses would lift the clean photos' scores as well).
        per_scale = self.combine(coherent[:, [drifts.index(0.0)]], incoherent)[:, 0]  # [S', N, K]; scales too large for the image are missing at the end
        best = list(per_scale.amax(dim=0).unbind(0))
        if not refine:
            return torch.stack(best)
        m, step = self.config.refine_steps, self.config.scale_step
        for n in range(len(best)):
            curve = per_scale[:, n].amax(dim=1)  # [S']
            i = curve.argmax().item()
            below = curve[i - 1] if i > 0 else -math.inf
            above = curve[i + 1] if i + 1 < len(curve) else -math.inf
            side = 1 if above >= below else -1
            fine = [scales[i] * step ** (side * j / (2 * m + 1)) for j in range(1, 2 * m + 1)]
            if len(drifts) > 1:
                # the scale by the coherent statistic (the incoherent one is flat in the drift),
                # the drift within it by the peak's height
                i = coherent[:, :, n].amax(dim=(1, 2)).argmax().item()
                d = height[i, :, n].amax(dim=1).argmax().item()
                half_step = (drifts[1] - drifts[0]) / 2
                fine += [scales[i] * (1 + drifts[d] + j * half_step) for j in (-1, 0, 1)]
            found = self.evidence_at(residual[n : n + 1], spectrum[n : n + 1] if len(spectrum) > 1 else spectrum, fine)
            if found is not None:
                best[n] = torch.maximum(best[n], found.amax(dim=(0, 1))[0])
        return torch.stack(best)

    def set_located(self, scale: float, weights, null_scales=None, null_weights: torch.Tensor | None = None, rings=None) -> None:
        """Read at one scale with weights over the tile's shifts from now on (DetectorConfig
        .located); with null_scales and null_weights [n, T*T], the key test's null keys' own;
        with rings (T/2 + 1 gains), every key's frequencies weighed by them."""
        located = {"scale": scale, "weights": [float(w) for w in weights]}
        if null_scales:
            located["null_scales"] = list(null_scales)
        if rings is not None:
            located["rings"] = [float(g) for g in rings]
        self.config.located = DetectorConfig(template=self.config.template, located=located).located  # validated
        self._buffers.pop("null_weights", None)
        if null_scales:
            self.register_buffer("null_weights", torch.as_tensor(null_weights, dtype=torch.float32).reshape(len(null_scales), -1).clone())

    def set_key_covariates(self, covariates: dict) -> None:
        """The key test's covariates (DetectorConfig.located["covariates"]): name -> the mean
        key_evidence [1 + null keys] of a folder of images."""
        located = dict(self.config.located or {}, covariates={name: [float(v) for v in values] for name, values in covariates.items()})
        self.config.located = DetectorConfig(template=self.config.template, located=located).located  # validated

    @property
    def key_covariates(self) -> dict | None:
        """What the key test regresses out of a set's mean evidence, or None (set_key_covariates)."""
        return (self.config.located or {}).get("covariates") or None

    def read_located(self, residual: torch.Tensor, spectrum: torch.Tensor, scales: list[float], weights: torch.Tensor, rings: torch.Tensor | None = None) -> torch.Tensor:
        """Evidence [N, K]: template k's z-scores over shifts (shift_z) at scales[k], with its
        frequencies weighed by rings[k] if given, weighed by weights[k] (normalised), for
        spectra [1, K, ...]."""
        out = residual.new_zeros(residual.shape[0], len(scales))
        for s in sorted(set(scales)):
            keys = [k for k, v in enumerate(scales) if v == s]
            z = self.shift_z(residual, spectrum[:, keys], s, None if rings is None else rings[keys])
            if z is None:
                raise ValueError(f"image of {tuple(residual.shape[-2:])} px holds no block of the mark at scale {s:.3f}")
            w = weights[keys].to(z)
            out[:, keys] = (z * (w / w.norm(dim=-1, keepdim=True))).sum(-1)
        return out

    def key_templates(self, bits: torch.Tensor, n_null: int | None = None) -> torch.Tensor:
        """[1, 1 + n_null, 3, T, T]: the template of bits [n_bits] and those of the key test's
        null keys (genwm.keys.null_key_bits); a located detector reads the n_null it stores."""
        from genwm.keys import null_key_bits

        located = self.config.located
        if located is not None:
            if "null_scales" not in located:
                raise ValueError("this located detector stores no null keys for the key test; fine-tune it again with this genwm")
            n_null = len(located["null_scales"])
        if not n_null:
            raise ValueError("the key test needs at least one null key")
        all_bits = torch.cat([bits.reshape(1, -1).cpu(), null_key_bits(n_null, self.config.n_bits)]).to(next(self.parameters()).device)
        return self.templates(all_bits)[None]

    def key_evidence(self, images: torch.Tensor, bits: torch.Tensor, n_null: int | None = None) -> torch.Tensor:
        """Evidence [N, 1 + n_null] under bits [n_bits] and under the key test's null keys, each
        read as this detector reads for that key: searched, or, located, where the same
        procedure located it. For a clean image no key is special, so the key's evidence ranks
        among the null keys' at random: the key test's null (genwm.calibration.key_test)."""
        return self.read_keys(images, self.prepare_keys(self.key_templates(bits, n_null)))

    def prepare_keys(self, templates: torch.Tensor):
        """What read_keys needs of the keys' templates [1, K, 3, T, T], made once for any number
        of images: the templates (searching), or their spectra, scales and weights (located)."""
        located = self.config.located
        if located is None:
            return templates
        weights = torch.cat([torch.tensor(located["weights"])[None], self.null_weights.cpu()])
        rings = torch.tensor(located["rings"]).expand(len(weights), -1) if "rings" in located else None
        return self.template_spectrum(templates), [located["scale"], *located["null_scales"]], weights, rings

    def read_keys(self, images: torch.Tensor, keys) -> torch.Tensor:
        """Evidence [N, K] of images under keys prepared by prepare_keys."""
        if self.config.located is None:
            return self.evidence(images, keys)
        spectrum, scales, weights, rings = keys
        return self.read_located(self.residual(images), spectrum, scales, weights, rings)

    @staticmethod
    def template_spectrum(templates: torch.Tensor) -> torch.Tensor:
        """Templates [N or 1, K, 3, T, T] -> the conjugate spectra evidence_at correlates with,
        [N or 1, K, 1, 3, T, T/2+1]."""
        return torch.fft.rfft2(unit(templates, (2, 3, 4))).conj()[:, :, None]

    def residual(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] in [0, 1] -> the front end's residual, where the mark stands out."""
        x = images * 2 - 1
        if self.config.row_window:
            return self.row_residual(x)
        residual = self.extractor(x)
        if self.config.highpass:
            residual = residual + x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
        return residual

    def row_residual(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3, H, W] in [-1, 1] -> the grey row means minus their moving average over
        row_window rows, repeated along each row and over the channels [N, 3, H, W]."""
        k = self.config.row_window
        rows = x.mean(dim=(1, 3), keepdim=True)  # [N, 1, H, 1]
        pad = min(k // 2, rows.shape[2] - 1)  # reflect padding needs fewer than H rows
        smooth = F.avg_pool2d(F.pad(rows, (0, 0, pad, pad), mode="reflect" if pad else "constant"), (2 * pad + 1, 1), stride=1)
        return (rows - smooth).expand(-1, x.shape[1], -1, x.shape[3]).contiguous()

    def correlation_spectra(self, residual: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor | None:
        """The spectra of each block's circular correlation with each template, summed over
        channels, [N, K, B, T, T/2+1], for a residual already at the mark's scale; None if it
        holds no whole block."""
        t = self.config.tile
        blocks = fold_blocks(residual, t, self.config.block_periods * t)
        if blocks is None:
            return None
        folded = torch.fft.rfft2(unit(blocks, (2, 3, 4)))  # [N, B, 3, T, T/2+1]
        if self.config.whiten:
            power = (folded.real.square() + folded.imag.square()).mean(dim=(1, 2), keepdim=True)
            # The floor: frequencies a resize or blur emptied are not blown up into noise.
            # (Squares, not abs: abs has no gradient at 0, and a block may be empty there.)
            floor = 1e-3 * power.mean(dim=(3, 4), keepdim=True) + 1e-24
            folded = folded * torch.rsqrt(torch.maximum(power, floor))
        return (folded[:, None] * spectrum).sum(dim=3)

    def correlation_maps(self, residual: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor | None:
        """Each block's circular correlation with each template, [N, K, B, T*T] (shift dy * T + dx
        last), for a residual already at the mark's scale; None if it holds no whole block."""
        spectra = self.correlation_spectra(residual, spectrum)
        t = self.config.tile
        return None if spectra is None else torch.fft.irfft2(spectra, s=(t, t)).flatten(3)

    @staticmethod
    def at_scale(residual: torch.Tensor, s: float) -> torch.Tensor:
        """The residual resampled so that a mark at relative scale s has the canonical period.
        Plain bilinear: the residual is already high-passed, and antialiasing costs more than
        the rest of the search together. Sampled at exactly 1 / s (not at whatever a whole
        number of output pixels gives): on a small image, rounding the size moves the scale by
        more than a whole photo's peak is wide."""
        if abs(s - 1) <= 1e-6:
            return residual
        return F.interpolate(residual, scale_factor=1 / s, mode="bilinear", align_corners=False, recompute_scale_factor=False)

    def ring_index(self) -> torch.Tensor:
        """[T, T/2+1]: the ring (cycles per tile, the larger of |kx| and |ky|) of each frequency
        of an rfft2 of the tile, 0 .. T/2 (DetectorConfig.located's "rings")."""
        return cycles_per_tile(self.config.tile, onesided=True).round().long()

    def summed_spectra(self, residual: torch.Tensor, spectrum: torch.Tensor, scale: float) -> torch.Tensor | None:
        """[N, K, T, T/2+1]: the spectrum of the blocks' correlation maps with each template,
        summed over the blocks, at one scale (None if no block fits)."""
        spectra = self.correlation_spectra(self.at_scale(residual, scale), spectrum)
        return None if spectra is None else spectra.sum(dim=2)

    def shift_z(self, residual: torch.Tensor, spectrum: torch.Tensor, scale: float, rings: torch.Tensor | None = None) -> torch.Tensor | None:
        """[N, K, T*T]: the blocks' correlation maps with each template summed, at one scale,
        as z-scores over the tile's shifts (None if no block fits); with rings [K, T/2+1], each
        template's frequencies weighed by its ring's gain first."""
        spectra = self.summed_spectra(residual, spectrum, scale)
        if spectra is None:
            return None
        if rings is not None:
            spectra = spectra * rings.to(spectra.real)[:, self.ring_index().to(spectra.device)]
        t = self.config.tile
        total = torch.fft.irfft2(spectra, s=(t, t)).flatten(2)  # summed before the inverse FFT: one, not one a block
        return (total - total.mean(dim=-1, keepdim=True)) / total.std(dim=-1, keepdim=True).clamp_min(1e-12)

    def drift_ramps(self, height: int, width: int, drifts) -> torch.Tensor:
        """[D, B, T, T/2+1]: for each relative scale error, the phase ramps that move each block's
        correlation map back by the drift that error causes at the block's position. At scale
        s(1 + e), a block centred c pixels from the middle sees the mark shifted by e * c."""
        t = self.config.tile
        centres = block_centres(height, width, t, self.config.block_periods * t)  # [B, 2]
        fy, fx = torch.fft.fftfreq(t), torch.fft.rfftfreq(t)
        phase = centres[:, 0, None, None] * fy[:, None] + centres[:, 1, None, None] * fx  # [B, T, T/2+1]
        e = torch.tensor(drifts, dtype=phase.dtype)[:, None, None, None]
        return torch.polar(torch.ones(()), 2 * math.pi * e * phase)

    def evidence_at(self, residual: torch.Tensor, spectrum: torch.Tensor, scales, drifts=(0.0,)) -> torch.Tensor | None:
        """Evidence [S, D, N, K] at each of the given scales, each s also read as s * (1 + e) for
        each e in drifts (None where no scale fits a period)."""
        found = self.statistics_at(residual, spectrum, scales, drifts)
        return None if found is None else self.combine(*found[:2])

    def combine(self, coherent: torch.Tensor, incoherent: torch.Tensor) -> torch.Tensor:
        """statistics_at's pair -> evidence [S, D, N, K]."""
        incoherent = incoherent[:, None].expand_as(coherent)
        return torch.maximum(coherent, incoherent) if self.config.coherent else incoherent

    def statistics_at(self, residual: torch.Tensor, spectrum: torch.Tensor, scales, drifts=(0.0,)):
        """The two statistics evidence_at takes the larger of, coherent [S, D, N, K] and
        incoherent [S, N, K], and the coherent peak's height above its map's mean [S, D, N, K]
        (None where no scale fits a period). The height, unlike the coherent statistic, does
        not saturate on a strong mark (whose own peak then sets its map's spread), so it tells
        apart the drifts at one scale, which share their blocks and so their noise."""
        coherent, incoherent, heights = [], [], []
        t = self.config.tile
        for s in scales:
            r = self.at_scale(residual, s)
            spectra = self.correlation_spectra(r, spectrum)  # [N, K, B, T, T/2+1]
            if spectra is None:
                continue
            # Coherent: the mark repeats with one phase over the whole photo, so its peak sits
            # at the same shift in every block and the blocks' maps add up (evidence grows with
            # the square root of the area); photo content and other keys' marks do not. A scale
            # slightly off moves the peak in proportion to the block's distance from the middle:
            # moved back, the maps add up again.
            if list(drifts) == [0.0]:
                total = spectra.sum(dim=2)[None]
            else:
                ramps = self.drift_ramps(r.shape[-2], r.shape[-1], drifts).to(spectra.device)
                total = torch.einsum("nkbyx,dbyx->dnkyx", spectra, ramps)
            total = torch.fft.irfft2(total, s=(t, t)).flatten(3)  # [D, N, K, T*T]
            height = total.max(dim=-1).values - total.mean(dim=-1)
            heights.append(height)
            coherent.append(height / total.std(dim=-1).clamp_min(1e-12) - self.null_peak)
            # Incoherent: each block's own peak, averaged; survives a slightly wrong scale, where
            # the peak drifts from block to block. sqrt(blocks) makes the null spread size-free.
            corr = torch.fft.irfft2(spectra, s=(t, t)).flatten(3)  # [N, K, B, T*T]
            peak = (corr.max(dim=-1).values - corr.mean(dim=-1)) / corr.std(dim=-1).clamp_min(1e-12)
            incoherent.append((peak.mean(dim=-1) - self.null_peak) * math.sqrt(peak.shape[-1]))
        return (torch.stack(coherent), torch.stack(incoherent), torch.stack(heights)) if coherent else None

    def logits_for(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """Binary logits [N, K] for bits [N or 1, K, n_bits]: each image against K keys."""
        k = bits.shape[1]
        templates = self.templates(bits.reshape(-1, bits.shape[-1]))
        return self.template_logits(images, templates.reshape(bits.shape[0], k, *templates.shape[1:]))

    def template_logits(self, images: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
        """Binary logits [N, K] against template tiles [N or 1, K, 3, T, T]."""
        return self.scale * self.evidence(images, templates) - self.bias

    def logit(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        """Binary logit [N] that each image carries the mark of bits [N or 1, n_bits]."""
        return self.logits_for(images, bits[:, None])[:, 0]

    forward = logit

    def to_canonical(self, image: torch.Tensor) -> torch.Tensor:
        """One image [3, H, W] -> [1, 3, h, w] at the scale the mark was rendered for."""
        h, w = image.shape[-2:]
        s = pattern_scale(h, w, self.config.canonical_size)
        x = image[None]
        if s > 1:
            size = (max(1, round(h / s)), max(1, round(w / s)))
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        h, w = x.shape[-2:]
        m = self.config.max_side
        top, left = max(0, (h - m) // 2), max(0, (w - m) // 2)
        return x[..., top : top + m, left : left + m]

    # ---- the user-facing API: load, score, verdict -------------------------------------

    @classmethod
    def from_pretrained(cls, path, device="cpu") -> "Detector":
        from genwm.checkpoint import load_calibration, load_checkpoint

        _, detector, config = load_checkpoint(path, device=device)
        if detector is None:
            raise ValueError(f"{path}: this checkpoint has no detector")
        detector.checkpoint_config = config
        detector.calibration = load_calibration(path)
        return detector

    def _canonical(self, image) -> torch.Tensor:
        """A PIL image or a [3, H, W] tensor in [0, 1] -> [1, 3, h, w] at canonical scale, on D's device."""
        from genwm.images import to_float_rgb

        if not isinstance(image, torch.Tensor):
            image = torch.from_numpy(to_float_rgb(image)).permute(2, 0, 1)
        return self.to_canonical(image.to(next(self.parameters()).device))

    @torch.no_grad()
    def logits(self, images, key) -> "np.ndarray":
        """Binary logits, one per image (PIL images, or [3, H, W] tensors in [0, 1])."""
        import numpy as np

        from genwm.keys import key_bits

        bits = key_bits(key, self.config.n_bits)[None] if isinstance(key, str) else key
        bits = bits.to(next(self.parameters()).device)
        return np.array([self.logit(self._canonical(img), bits).item() for img in images])

    @torch.no_grad()
    def key_reader(self, key: str, n_null: int | None = None):
        """A function: one PIL image or [3, H, W] tensor -> its key_evidence [1 + null keys]
        (numpy), the keys' templates (and, located, their spectra) made once for all the images
        it reads."""
        from genwm.keys import key_bits

        keys = self.prepare_keys(self.key_templates(key_bits(key, self.config.n_bits), n_null))

        @torch.no_grad()
        def read(img):
            return self.read_keys(self._canonical(img), keys)[0].cpu().numpy()

        return read

    def logit_of_key_evidence(self, evidence) -> float:
        """A located detector's logit from one image's key_evidence row: column 0 is what it
        reads for the key, so scanning under every key needs no second reading."""
        if self.config.located is None:
            raise ValueError("only a located detector reads the key as the key test does")
        return float(self.scale.item() * float(evidence[0]) - self.bias.item())

    def key_evidences(self, images, key: str, n_null: int | None = None) -> "np.ndarray":
        """key_evidence, [images, 1 + null keys], for PIL images or [3, H, W] tensors."""
        import numpy as np

        read = self.key_reader(key, n_null)
        return np.stack([read(img) for img in images])

    def score(self, images, key) -> "np.ndarray":
        """Probability, per image, that it carries the key's watermark."""
        from scipy.special import expit

        return expit(self.logits(images, key))

    def verdict(self, images, key, alpha: float = 0.01, null_keys: int = 0) -> dict:
        """Set-level test (see genwm.calibration): the key test for a located detector or with
        null_keys, else the binomial test against the calibrated null distribution."""
        from genwm.calibration import key_test, set_verdict, wants_key_test

        images = list(images)
        if wants_key_test(self, null_keys):
            return key_test(self.key_evidences(images, key, null_keys), alpha, covariates=self.key_covariates)
        if not getattr(self, "calibration", None):
            raise ValueError("this detector has no calibration.json; run `genwm calibrate` first, or pass null_keys")
        return set_verdict(self.logits(images, key), self.calibration, alpha=alpha)
