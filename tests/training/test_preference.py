"""The preference losses and metrics against a float64 NumPy computation of the published
formulas (DPO, conservative DPO, IPO): values and gradients with respect to the logits, on
fixed logits, targets and reference log-probabilities. Runs on every backend."""

import keras
import numpy as np
import pytest

from theseus.base.targets import IGNORE_INDEX
from theseus.training.preference import PreferenceLoss, preference_metrics

PAIRS, LENGTH, VOCAB = 3, 5, 7
VARIANTS = {
    "dpo": dict(beta=0.1, loss="sigmoid", label_smoothing=0.0),
    "conservative-dpo": dict(beta=0.5, loss="sigmoid", label_smoothing=0.2),
    "ipo": dict(beta=0.3, loss="ipo", label_smoothing=0.0),
}


def batch():
    """Logits (2P, T, V), targets with prompt positions ignored, reference log-probabilities (2P,)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(2 * PAIRS, LENGTH, VOCAB))
    targets = rng.integers(0, VOCAB, size=(2 * PAIRS, LENGTH))
    targets[:, :2] = IGNORE_INDEX  # the prompt
    targets[1, 4] = IGNORE_INDEX  # a shorter rejected answer (padding)
    reference = rng.normal(loc=-8.0, scale=1.5, size=2 * PAIRS)
    y_true = np.concatenate([targets, reference[:, None]], axis=1)
    return logits, targets, reference, y_true


def numpy_reference(logits, targets, reference, beta, loss, label_smoothing):
    """The loss and its gradient with respect to the logits, in float64, from the formulas."""
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # (2P, T, V)
    valid = targets != IGNORE_INDEX
    picked = np.take_along_axis(logp, np.where(valid, targets, 0)[..., None], -1)[..., 0]
    policy = np.where(valid, picked, 0.0).sum(-1)  # (2P,)
    ratio = (policy - reference).reshape(PAIRS, 2)
    h = ratio[:, 0] - ratio[:, 1]
    sigmoid = 1 / (1 + np.exp(-beta * h))
    if loss == "ipo":  # Azar et al. 2023, eq. 17: (h - 1/(2 tau))^2
        losses, dh = (h - 1 / (2 * beta)) ** 2, 2 * (h - 1 / (2 * beta))
    else:  # Rafailov et al. 2023 eq. 7, with labels flipped with probability eps (conservative DPO)
        losses = -(1 - label_smoothing) * np.log(sigmoid) - label_smoothing * np.log(1 - sigmoid)
        dh = -(1 - label_smoothing) * beta * (1 - sigmoid) + label_smoothing * beta * sigmoid
    dpolicy = np.stack([dh, -dh], axis=1).reshape(-1) / PAIRS  # mean over pairs
    onehot = np.eye(VOCAB)[np.where(valid, targets, 0)]
    softmax = np.exp(logp)
    grad = dpolicy[:, None, None] * np.where(valid[..., None], onehot - softmax, 0.0)
    return losses.mean(), grad, beta * h


def loss_and_gradient(loss, logits, y_true):
    """The loss and d loss / d logits on the running backend."""
    backend = keras.backend.backend()
    y_true = keras.ops.convert_to_tensor(y_true, "float32")
    if backend == "jax":
        import jax

        value, grad = jax.value_and_grad(lambda x: loss(y_true, x))(keras.ops.convert_to_tensor(logits, "float32"))
    elif backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(logits.astype("float32"))
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(y_true, x)
        grad = tape.gradient(value, x)
    else:
        import torch

        x = torch.tensor(logits.astype("float32"), requires_grad=True)
        value = loss(y_true, x)
        value.backward()
        grad = x.grad
    return float(keras.ops.convert_to_numpy(value)), keras.ops.convert_to_numpy(grad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_and_gradients_match_the_published_formulas(variant):
    logits, targets, reference, y_true = batch()
    expected, expected_grad, _ = numpy_reference(logits, targets, reference, **VARIANTS[variant])
    value, grad = loss_and_gradient(PreferenceLoss(**VARIANTS[variant]), logits, y_true)
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)
    assert np.abs(expected_grad).max() > 1e-3  # a gradient that says something


def test_reward_metrics_match_numpy():
    logits, targets, reference, y_true = batch()
    _, _, margins = numpy_reference(logits, targets, reference, **VARIANTS["dpo"])
    metrics = preference_metrics(VARIANTS["dpo"]["beta"])
    for metric in metrics:
        metric.update_state(
            keras.ops.convert_to_tensor(y_true, "float32"), keras.ops.convert_to_tensor(logits, "float32")
        )
    assert [m.name for m in metrics] == ["reward_margin", "reward_accuracy"]
    margin, accuracy = (float(keras.ops.convert_to_numpy(m.result())) for m in metrics)
    assert margin == pytest.approx(margins.mean(), rel=1e-5)
    assert accuracy == pytest.approx((margins > 0).mean())
    assert 0 < accuracy < 1  # both outcomes occur in the fixed batch


def test_the_loss_is_log_2_when_the_policy_is_the_reference():
    """At the start of training (policy = reference) DPO's loss is log 2 and IPO's is 1/(4 beta^2)."""
    logits, targets, _, y_true = batch()
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, np.where(targets >= 0, targets, 0)[..., None], -1)[..., 0]
    y_true[:, -1] = np.where(targets >= 0, picked, 0.0).sum(-1)
    for loss, expected in ((PreferenceLoss(), np.log(2)), (PreferenceLoss(beta=0.5, loss="ipo"), 1.0)):
        value = float(keras.ops.convert_to_numpy(loss(y_true.astype("float32"), logits.astype("float32"))))
        assert value == pytest.approx(expected, rel=1e-5)


def test_an_unknown_loss_is_refused_and_the_config_round_trips():
    with pytest.raises(ValueError, match="Argument `loss` must be one of"):
        PreferenceLoss(loss="hinge")
    loss = PreferenceLoss(beta=0.25, loss="ipo")
    again = PreferenceLoss.from_config(loss.get_config())
    assert (again.beta, again.loss, again.label_smoothing) == (0.25, "ipo", 0.0)
