"""Temperature scaling: pure functions, and the card's temperature applied where models predict."""
import numpy as np
import pytest

from conftest import publish_untrained_model
from lesionspark.modeling import calibration
from lesionspark.modeling.metrics import calibration as reliability


def _overconfident(n=4000, k=5, seed=0):
    """Labels drawn from softened probabilities, reported sharpened: an over-confident model."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, k))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=p) for p in true_p])
    reported = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    return y, reported


@pytest.mark.parametrize("objective", calibration.OBJECTIVES)
def test_fit_recovers_the_sharpening_and_lowers_the_ece(objective):
    y, probs = _overconfident()
    t = calibration.fit_temperature(y, probs, objective)
    assert 2.6 < t < 3.4  # the reports were logits x 3
    cal = calibration.apply(probs, t)
    assert (cal.argmax(1) == probs.argmax(1)).all()  # decisions unchanged
    assert np.allclose(cal.sum(1), 1)
    before, after = reliability(y, probs, 15)["ece"], reliability(y, cal, 15)["ece"]
    assert after < 0.03 < before
    assert calibration.nll(y, cal) < calibration.nll(y, probs)


def test_identity_and_degenerate_inputs():
    y, probs = _overconfident(200)
    assert np.array_equal(calibration.apply(probs, 1.0), probs)
    assert calibration.fit_temperature(np.zeros(10, int), probs[:10]) == 1.0  # one class seen: nothing to fit
    with pytest.raises(ValueError, match="calibration_objective"):
        calibration.fit_temperature(y, probs, "brier")
    calibrated = _overconfident(300, seed=1)[0], calibration.apply(_overconfident(300, seed=1)[1], 3.0)
    assert calibration.fit_temperature(*calibrated) == 1.0 or \
        reliability(calibrated[0], calibration.apply(calibrated[1], calibration.fit_temperature(*calibrated)), 15)["ece"] \
        <= reliability(*calibrated, 15)["ece"]  # never above the raw ECE: T = 1 is on the grid
    zero = np.array([[1.0, 0.0, 0.0]])  # a float32 softmax can round to exactly 0
    assert np.isfinite(calibration.apply(zero, 2.0)).all()
    assert calibration.temperature({}) == 1.0
    assert calibration.temperature({"calibration": {"temperature": 1.7}}) == 1.7
    assert "calibration" not in calibration.uncalibrated({"calibration": {"temperature": 2}, "name": "x"})


def test_predict_and_explain_apply_the_cards_temperature(tmp_path):
    from lesionspark.modeling.overlays import explain_arrays
    from lesionspark.inference.predictor import predict_arrays
    model, card = publish_untrained_model(tmp_path, size=32)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    raw = predict_arrays(model, card, images, 8)
    hot = {**card, "calibration": {"temperature": 0.25}}
    assert np.allclose(predict_arrays(model, hot, images, 8), calibration.apply(raw, 0.25))
    _, probs, _ = explain_arrays(model, hot, images)
    assert np.allclose(probs, calibration.apply(raw, 0.25), atol=1e-5)
