"""The key test: a set-level test whose false-positive rate holds for images of one model."""
import numpy as np
import pytest
import torch

from genwm.calibration import key_test, make_calibration, rank_p_value, set_verdict
from genwm.models import Detector, DetectorConfig, GeneratorConfig

from conftest import smooth_photo

KEY = "key-test-key"


def test_p_value_counts_the_null_keys_scoring_at_least_as_high():
    evidence = np.array([[2.0, 1.0, 3.0, 2.0, 0.0], [2.0, 1.0, 3.0, 2.0, 0.0]])
    result = key_test(evidence, alpha=0.5)
    assert result["n_null_keys"] == 4 and result["evidence"] == 2.0
    assert result["p_value"] == pytest.approx(3 / 5) and not result["watermark_detected"]  # 3.0, 2.0 and the key itself
    assert key_test(np.array([[5.0, 1.0, 2.0, 3.0]]), alpha=0.25)["watermark_detected"]  # p = 1/4 <= 0.25
    with pytest.raises(ValueError, match="at least one image and one null key"):
        key_test(np.zeros((3, 1)))


def test_with_covariates_each_key_is_ranked_by_how_far_it_rose_above_what_they_predict_of_it():
    rng = np.random.default_rng(0)
    photos = rng.normal(size=200)
    means = 0.8 * photos + rng.normal(0, 0.1, 200)  # every key reads the suspects as it reads the photos
    means[0] = 0.8 * photos[0] + 0.5  # and the key a little more
    evidence = np.stack([means, means])
    assert key_test(evidence)["p_value"] > 0.05  # the photos' spread hides it
    found = key_test(evidence, covariates={"photos": photos})
    assert found["p_value"] == pytest.approx(1 / 200) and found["conditioned_on"] == ["photos"]
    assert found["evidence"] == pytest.approx(0.5, abs=0.05)  # the key's rise above its prediction
    with pytest.raises(ValueError, match="covariate 'photos' has 2 numbers for 200 keys"):
        key_test(evidence, covariates={"photos": [0.0, 1.0]})
    with pytest.raises(ValueError, match="3 keys cannot be regressed on 1 covariates"):
        key_test(evidence[:, :3], covariates={"photos": photos[:3]})


def test_a_key_the_covariates_read_high_keeps_its_own_mark():
    """Each key is predicted from the other keys' fit: a key far out along a covariate cannot
    pull the fit through itself and absorb its mark."""
    rng = np.random.default_rng(1)
    photos = rng.normal(size=100)
    photos[0] = 40.0
    means = 0.5 * photos + rng.normal(0, 0.1, 100)
    means[0] += 1.0
    assert key_test(np.stack([means]), covariates={"photos": photos})["p_value"] == pytest.approx(1 / 100)
    # An ordinary fit through every key, this one included, gives it a leverage of 0.96 and
    # takes as much of its rise: ranked so, the key would be lost.
    design = np.column_stack([np.ones(100), photos])
    assert np.square(np.linalg.qr(design)[0]).sum(axis=1)[0] == pytest.approx(0.96, abs=0.01)
    ordinary = means - design @ np.linalg.lstsq(design, means, rcond=None)[0]
    assert rank_p_value(ordinary[0], ordinary[1:]) == pytest.approx(0.31)


def located_detector(n_null: int) -> Detector:
    """A detector reading one place per key, as phase 2's located ones do; the null keys' places
    are drawn at random (any places chosen without the suspect images would do)."""
    torch.manual_seed(0)
    d = Detector(DetectorConfig(template=GeneratorConfig(tile=8, canonical_size=64).to_dict(), width=8, highpass=True)).eval()
    g = torch.Generator().manual_seed(1)
    d.set_located(1.0, torch.randn(64, generator=g).tolist(), [1.0] * n_null, torch.randn(n_null, 64, generator=g))
    return d


def model_images(n: int, seed: int, texture_seed: int | None) -> list[torch.Tensor]:
    """Photo-like images of one "model": each with its own content and noise, all with the
    model's fine texture (texture_seed), or each with a texture of its own (None)."""
    rng = np.random.default_rng(seed)
    shared = np.random.default_rng(texture_seed).normal(0, 0.03, (3, 64, 64)) if texture_seed is not None else None
    out = []
    for i in range(n):
        x = smooth_photo(64, 64, seed * 1000 + i).transpose(2, 0, 1) / 255
        texture = shared if shared is not None else rng.normal(0, 0.03, (3, 64, 64))
        out.append(torch.from_numpy(x + texture + rng.normal(0, 0.01, x.shape)).float().clamp(0, 1))
    return out


def test_sets_sharing_one_models_texture_fool_the_binomial_test_but_not_the_key_test():
    d = located_detector(n_null=99)
    # The per-image null, measured honestly on independent clean images.
    calibration = make_calibration(d.logits(model_images(240, 1, None), KEY), alpha_image=0.1)
    binomial, keys = [], []
    for m in range(60):  # 60 clean models, a set of 8 images from each
        images = model_images(8, 100 + m, texture_seed=m)
        binomial.append(set_verdict(d.logits(images, KEY), calibration, alpha=0.01)["watermark_detected"])
        keys.append(d.verdict(images, KEY, alpha=0.01)["watermark_detected"])
    # A model whose texture happens to meet the key's template lifts all 8 scores together: the
    # binomial test, which takes them for independent, fires far above its 1%; the key test
    # ranks the key among null keys read on the same images, and stays near 1%.
    assert np.mean(binomial) >= 0.05, np.mean(binomial)
    assert np.mean(keys) <= 0.04, np.mean(keys)


def test_a_located_covariate_needs_one_number_per_key():
    d = located_detector(3)
    d.set_key_covariates({"photos": [0.1, 0.2, 0.3, 0.4]})
    assert d.key_covariates == {"photos": [0.1, 0.2, 0.3, 0.4]}
    with pytest.raises(ValueError, match="covariate 'photos': expected one number for the key and one for each of its 3 null keys, got 2"):
        d.set_key_covariates({"photos": [0.1, 0.2]})
