"""Built-in losses: Window Temporal Delta, trajectory smoothing, reconstruction.

Properties (hypothesis) are checked on the weighted loss ``weight * L`` with ``weight > 0``, as
the trainer uses it (the weight is the loss section's framework field, ``WeightedLoss``);
W = min(window, S - 1) is the clipped window. The Loss contract itself: ``check_loss``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from lrag_framework.interfaces import Loss, LossInputs
from lrag_framework.testing import check_loss
from lrag_framework.training.components import LossConfig, WeightedLoss
from lrag_losses import plugin
from lrag_losses.plugin import WindowTemporalDeltaParams

PROPS = settings(max_examples=60, deadline=None)


def wtd(weight=1.0, **params) -> WeightedLoss:
    return WeightedLoss(plugin.build_window_temporal_delta(WindowTemporalDeltaParams(**params)),
                        weight)


def weighted(loss: Loss, e: torch.Tensor) -> float:
    return loss.weight * float(loss(LossInputs(embeddings=e)))


@st.composite
def sequences(draw, min_s=2, max_s=7, max_d=5):
    """Float64 embeddings [B, S, D] with every norm in [0.1, 10] (far above the cosine eps)."""
    b, s, d = draw(st.integers(1, 3)), draw(st.integers(min_s, max_s)), draw(st.integers(2, max_d))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    e = rng.standard_normal((b, s, d))
    if draw(st.booleans()):  # correlated neighbours: a random walk, so hinges are often active
        e = np.cumsum(e * draw(st.sampled_from([0.05, 0.3])), axis=1) + rng.standard_normal(d)
    norms = np.linalg.norm(e, axis=-1, keepdims=True)
    assume(norms.min() > 1e-3)
    e = e / norms * rng.uniform(0.1, 10, size=norms.shape)
    return torch.from_numpy(e)


def pair_cosines(e: torch.Tensor, window: int) -> list[tuple[int, torch.Tensor]]:
    """(lag k, cos [B, S-k]) for k = 1..W, in float64 by the textbook formula."""
    out = []
    for k in range(1, min(window, e.shape[1] - 1) + 1):
        a, b = e[:, k:], e[:, :-k]
        out.append((k, (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))))
    return out


weights = st.floats(0.01, 10)
windows = st.integers(1, 9)


@PROPS
@given(sequences(), windows, weights, st.floats(1e-5, 0.5))
def test_wtd_is_zero_when_every_pair_in_the_window_is_within_the_margin(e, window, weight, gap):
    top = max(float(c.max()) for _, c in pair_cosines(e, window))
    assume(top + gap <= 1)
    assert weighted(wtd(weight, margin=top + gap, window=window), e) == 0.0


@PROPS
@given(sequences(), windows, weights, st.floats(-1, 0.99))
def test_wtd_exceeds_the_excess_of_any_violating_pair(e, window, weight, margin):
    """WTD >= weight * excess / (W * B * (S - k)) for any pair at lag k <= W with cos = margin +
    excess: the pair's hinge enters one mean over B * (S - k) pairs, then a mean over W lags."""
    tol = 1e-4
    w = min(window, e.shape[1] - 1)
    bounds = [float(c.max() - margin) / (w * c.numel()) for _, c in pair_cosines(e, window)]
    assume(max(bounds) * w * e.shape[0] > tol)  # some pair exceeds the margin by more than tol
    value = weighted(wtd(weight, margin=margin, window=window), e)
    assert value >= weight * max(bounds) * (1 - 1e-9)
    assert value > 0


@PROPS
@given(sequences(), windows, weights, st.floats(-1, 1),
       st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=7))
def test_wtd_ignores_positive_scales_per_frame(e, window, weight, margin, scales):
    s = torch.tensor((scales * e.shape[1])[: e.shape[1]], dtype=e.dtype)[None, :, None]
    loss = wtd(weight, margin=margin, window=window)
    assert weighted(loss, e * s) == pytest.approx(weighted(loss, e), rel=1e-9, abs=1e-12)
    assert weighted(loss, e.float() * s.float()) == pytest.approx(weighted(loss, e), abs=1e-5)


@PROPS
@given(sequences(), windows, weights, st.floats(0, 0.99))
def test_a_small_gradient_step_lowers_wtd_when_a_violating_pair_is_not_parallel(
        e, window, weight, margin):
    """For margins in [0, 1): if some pair within the window has cos > margin and cos < 1 (not
    parallel), the gradient is non-zero and a small step against it lowers the loss."""
    cos = pair_cosines(e, window)
    assume(any(((c > margin + 1e-6) & (c < 1 - 1e-6)).any() for _, c in cos))
    loss = wtd(weight, margin=margin, window=window)
    x = e.clone().requires_grad_(True)
    value = loss.weight * loss(LossInputs(embeddings=x))
    value.backward()
    g = x.grad
    assert g.norm() > 0
    step = 1e-7 * float(e.norm(dim=-1).min()) / float(g.norm())
    assert weighted(loss, (e - step * g).detach()) < float(value.detach())


@PROPS
@given(sequences(), st.integers(0, 20), st.floats(-1, 1))
def test_wtd_window_beyond_the_sequence_is_clipped(e, extra, margin):
    clipped = wtd(margin=margin, window=e.shape[1] - 1)
    assert weighted(wtd(margin=margin, window=e.shape[1] - 1 + extra), e) == weighted(clipped, e)


@PROPS
@given(sequences(), windows, st.floats(-1, 1))
def test_wtd_matches_the_formula(e, window, margin):
    cos = pair_cosines(e, window)
    expected = float(np.mean([torch.relu(c - margin).mean() for _, c in cos]))
    assert weighted(wtd(margin=margin, window=window), e) == pytest.approx(expected, abs=1e-12)


def smoothing(weight=1.0) -> WeightedLoss:
    return WeightedLoss(plugin.build_trajectory_smoothing(), weight)


@PROPS
@given(st.integers(1, 3), st.integers(3, 9), st.integers(1, 6), weights,
       st.integers(0, 2 ** 32 - 1))
def test_smoothing_is_zero_on_an_evenly_spaced_straight_line(b, s, d, weight, seed):
    rng = np.random.default_rng(seed)
    start, step = rng.standard_normal((b, 1, d)), rng.standard_normal((b, 1, d))
    line = torch.from_numpy(start + np.arange(s)[None, :, None] * step)  # [B, S, D]
    scale = float(np.abs(start).max() + s * np.abs(step).max())
    assert weighted(smoothing(weight), line) <= 1e-12 * scale
    ints = torch.from_numpy(rng.integers(-50, 50, (b, 1, d)) + np.arange(s)[None, :, None]
                            * rng.integers(-5, 5, (b, 1, d))).double()
    assert weighted(smoothing(weight), ints) == 0.0


@PROPS
@given(sequences(min_s=3), weights)
def test_smoothing_matches_the_formula_and_its_gradient_is_finite(e, weight):
    expected = np.mean([float((e[b, t + 1] - 2 * e[b, t] + e[b, t - 1]).norm())
                        for b in range(e.shape[0]) for t in range(1, e.shape[1] - 1)])
    assert weighted(smoothing(weight), e) == pytest.approx(weight * expected, rel=1e-9)
    x = e.clone().requires_grad_(True)
    smoothing()(LossInputs(embeddings=x)).backward()
    assert torch.isfinite(x.grad).all()


def test_smoothing_gradient_is_finite_on_a_straight_line():
    x = torch.arange(12.0).view(1, 4, 3).requires_grad_(True)
    smoothing()(LossInputs(embeddings=x)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() == 0


def test_losses_reject_short_or_misshaped_sequences():
    with pytest.raises(ValueError, match="at least 2 frames, got S=1"):
        wtd()(LossInputs(embeddings=torch.randn(2, 1, 4)))
    with pytest.raises(ValueError, match="at least 3 frames, got S=2"):
        smoothing()(LossInputs(embeddings=torch.randn(2, 2, 4)))
    with pytest.raises(ValueError, match=r"\[B, S, D\], got \[2, 4\]"):
        wtd()(LossInputs(embeddings=torch.randn(2, 4)))


def test_losses_compute_in_float32_under_bf16():
    e = torch.randn(2, 5, 8, dtype=torch.bfloat16)
    assert wtd()(LossInputs(embeddings=e)).dtype == torch.float32
    assert smoothing()(LossInputs(embeddings=e)).dtype == torch.float32


def test_reconstruction_is_the_mse_and_needs_both_tensors():
    rec = plugin.build_reconstruction()
    x, y = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5)
    e = torch.randn(2, 3, 8)
    value = rec(LossInputs(embeddings=e, latents=x, reconstruction=y))
    assert float(value) == pytest.approx(float(((x - y) ** 2).mean()), rel=1e-6)
    assert float(rec(LossInputs(embeddings=e, latents=x, reconstruction=x))) == 0.0
    with pytest.raises(ValueError, match="reconstruction=None"):
        rec(LossInputs(embeddings=e, latents=x))
    with pytest.raises(ValueError, match=r"\[2, 3, 4, 5, 4\] != latents shape"):
        rec(LossInputs(embeddings=e, latents=x, reconstruction=y[..., :4]))


def test_plugin_registers_the_three_losses_with_their_params():
    seen = {}
    plugin.register_losses(lambda name, factory, model=None: seen.update({name: (factory, model)}))
    assert set(seen) == {"window_temporal_delta", "trajectory_smoothing", "reconstruction"}
    for factory, model in seen.values():
        assert isinstance(factory(model()) if model else factory(), Loss)
    d = WindowTemporalDeltaParams()
    assert (d.margin, d.window) == (0.85, 3)
    for bad in ({"margin": 1.5}, {"window": 0}, {"weight": 1}, {"windw": 3}):
        with pytest.raises(ValidationError):
            WindowTemporalDeltaParams(**bad)


def test_losses_build_through_the_registry():
    from lrag_framework.plugins import load_plugins

    loss = load_plugins().build("loss", "window_temporal_delta", {"margin": 0.5})
    assert (loss.margin, loss.window) == (0.5, 3)


@pytest.mark.parametrize("name, kw", [
    ("window_temporal_delta", {}), ("trajectory_smoothing", {"min_frames": 3}),
    ("reconstruction", {"needs": ("latents", "reconstruction")})])
def test_built_in_losses_keep_the_loss_contract(name, kw):
    from lrag_framework.plugins import load_plugins

    check_loss(lambda: load_plugins().build("loss", name, {}), max_examples=25, **kw)


def test_weight_is_a_framework_field_and_params_weight_is_deprecated():
    assert LossConfig(name="reconstruction").weight == 1.0
    assert LossConfig(name="reconstruction", weight=0.5).weight == 0.5
    with pytest.warns(FutureWarning, match="params.weight is deprecated"):
        old = LossConfig.model_validate({"name": "window_temporal_delta",
                                         "params": {"weight": 2.0, "margin": 0.5}})
    assert (old.weight, old.params) == (2.0, {"margin": 0.5})
    with pytest.raises(ValidationError, match="weight is given twice"):
        LossConfig.model_validate({"name": "reconstruction", "weight": 1,
                                   "params": {"weight": 2}})
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        LossConfig(name="reconstruction", weight=-1)
