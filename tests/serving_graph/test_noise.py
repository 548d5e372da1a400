"""Noise policies: the constant draw, the fresh pool scheme's statistics, the setting."""

from __future__ import annotations

import numpy as np
import pytest

from a2f_engine.noise import (
    check_pool_rows,
    constant_noise,
    draw_pool_mix,
    noise_pool,
    parse_noise_policies,
    policy_for,
    pool_noise,
    pool_rows_needed,
)
from a2f_volume.errors import InvalidArgumentError

STEPS_1, FRAMES, VALUES, ROWS = 3, 60, 4096, 512


def test_constant_noise_is_a_function_of_the_seed() -> None:
    a = constant_noise((1, 3, 4, 5), seed=7)
    assert a.dtype == np.float32 and a.shape == (1, 3, 4, 5)
    assert np.array_equal(a, constant_noise((1, 3, 4, 5), seed=7))
    assert not np.array_equal(a, constant_noise((1, 3, 4, 5), seed=8))


def test_pool_noise_values_are_standard_normal() -> None:
    pool = noise_pool(ROWS, VALUES, seed=1)
    rows, mix = draw_pool_mix(np.random.default_rng(2), 2, STEPS_1, FRAMES, ROWS)
    x = pool_noise(pool, rows, mix).astype(np.float64)
    assert x.shape == (2, STEPS_1, FRAMES, VALUES)
    n = x.size  # ~1.5 million values
    assert abs(x.mean()) < 5 / np.sqrt(n)
    assert abs(x.var() - 1.0) < 5 * np.sqrt(2 / n)
    # tails as a normal's: P(|x| > 2) = 0.0455, P(|x| > 3) = 0.0027
    assert abs(np.mean(np.abs(x) > 2) - 0.0455) < 0.002
    assert abs(np.mean(np.abs(x) > 3) - 0.0027) < 0.0005
    # the mix is a rotation: cos^2 + sin^2 = 1
    assert np.allclose((mix.astype(np.float64) ** 2).sum(-1), 1.0, atol=1e-6)


def test_a_window_uses_distinct_pool_rows_so_its_values_are_independent() -> None:
    pool = noise_pool(ROWS, VALUES, seed=3)
    rows, mix = draw_pool_mix(np.random.default_rng(4), 3, STEPS_1, FRAMES, ROWS)
    for b in range(3):
        assert np.unique(rows[b]).size == pool_rows_needed(STEPS_1, FRAMES)
    x = pool_noise(pool, rows, mix)[0].reshape(-1, VALUES).astype(np.float64)
    corr = np.asarray(np.corrcoef(x))[np.triu_indices(x.shape[0], 1)]
    # independent rows of 4096 values: correlations ~ N(0, 1/4096)
    assert np.abs(corr).max() < 6 / np.sqrt(VALUES)
    assert abs(corr.std() - 1 / np.sqrt(VALUES)) < 0.2 / np.sqrt(VALUES)


def test_windows_are_weakly_correlated_as_documented() -> None:
    """Two windows' tensors correlate with mean 0 and a spread of about
    1 / sqrt(steps_1 * frames * pool rows)."""
    pool = noise_pool(ROWS, VALUES, seed=5)
    rng = np.random.default_rng(6)
    windows = [pool_noise(pool, *draw_pool_mix(rng, 1, STEPS_1, FRAMES, ROWS)).ravel()
               for _ in range(40)]
    x = np.stack(windows).astype(np.float64)
    corr = np.asarray(np.corrcoef(x))[np.triu_indices(len(windows), 1)]
    spread = 1 / np.sqrt(STEPS_1 * FRAMES * ROWS)
    assert abs(corr.mean()) < 3 * spread / np.sqrt(corr.size) + 1e-3
    assert 0.5 * spread < corr.std() < 1.5 * spread
    assert np.abs(corr).max() < 6 * spread


def test_pool_too_small_is_rejected_with_the_minimum() -> None:
    with pytest.raises(InvalidArgumentError, match="at least 360"):
        check_pool_rows(100, STEPS_1, FRAMES)
    with pytest.raises(InvalidArgumentError, match="at least 360"):
        draw_pool_mix(np.random.default_rng(0), 1, STEPS_1, FRAMES, 359)


def test_noise_policy_setting() -> None:
    assert parse_noise_policies("") == ("constant", {})
    assert parse_noise_policies("fresh") == ("fresh", {})
    default, over = parse_noise_policies(" fresh , mark=constant,claire-v2=fresh")
    assert default == "fresh" and over == {"mark": "constant", "claire-v2": "fresh"}
    assert policy_for("mark", default, over) == "constant"
    assert policy_for("other", default, over) == "fresh"
    assert parse_noise_policies("mark=fresh") == ("constant", {"mark": "fresh"})
    with pytest.raises(InvalidArgumentError, match="allowed: constant, fresh"):
        parse_noise_policies("random")
    with pytest.raises(InvalidArgumentError, match="two defaults"):
        parse_noise_policies("fresh,constant")
    with pytest.raises(InvalidArgumentError, match="no model name"):
        parse_noise_policies("=fresh")
