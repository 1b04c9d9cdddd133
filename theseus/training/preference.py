"""Preference losses for `model.fit`: DPO, conservative DPO (label smoothing) and IPO.

A batch holds pairs as consecutive rows, chosen then rejected (`theseus.data.preference`):
the model's logits are `(2P, T, vocab)` and `y_true` is `(2P, T + 1)` float32, each row's
targets (`IGNORE_INDEX` outside the answer) followed by its log-probability under the
reference model. With `log π` the policy's summed log-probability of an answer and
`h = (log π(chosen) - log π_ref(chosen)) - (log π(rejected) - log π_ref(rejected))`,
each pair's loss is

- `sigmoid` (DPO, Rafailov et al. 2023): `-(1 - ε) log σ(β h) - ε log σ(-β h)`; with label
  smoothing `ε > 0` it is conservative DPO (Mitchell 2023: the labels are flipped with
  probability ε);
- `ipo` (Azar et al. 2023): `(h - 1 / (2β))²`, on summed log-probabilities as the paper
  writes it (TRL averages them per token instead).

The implicit reward of an answer is `β (log π - log π_ref)`; the metrics are the mean
margin (chosen reward minus rejected reward) and accuracy (the share of pairs whose chosen
reward is higher). The losses average over pairs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import keras
from keras import ops

from theseus.base.targets import IGNORE_INDEX
from theseus.config import field

LOSSES = ("sigmoid", "ipo")


@dataclasses.dataclass
class DPOConfig:
    """The preference objective of a `train/dpo` job."""

    beta: float = field(
        "dpo/beta", default=0.1, bounds="> 0", help="how far from the reference the policy may go (smaller: further)"
    )
    loss: Literal["sigmoid", "ipo"] = field(
        "dpo/loss", default="sigmoid", help="sigmoid: DPO (with label_smoothing: conservative DPO); ipo: IPO"
    )
    label_smoothing: float = field(
        "dpo/label_smoothing",
        default=0.0,
        bounds="[0, 0.5)",
        help="conservative DPO: the probability that a pair's labels are flipped (sigmoid loss only)",
    )


def sequence_logps(logits, targets):
    """Per row: the summed log-probability of the targets that count (not `IGNORE_INDEX`), (B,)."""
    targets = ops.cast(targets, "int32")
    valid = ops.not_equal(targets, IGNORE_INDEX)
    picked = ops.take_along_axis(logits, ops.where(valid, targets, 0)[..., None], axis=-1)[..., 0]  # (B, T)
    return ops.sum(ops.where(valid, picked - ops.logsumexp(logits, axis=-1), 0.0), axis=-1)


def log_ratios(y_true, logits):
    """`log π - log π_ref` of each pair's answers, (P, 2): chosen, rejected."""
    policy = sequence_logps(logits, y_true[:, :-1])  # (2P,)
    return ops.reshape(policy - y_true[:, -1], (-1, 2))


def pair_losses(ratios, beta: float, loss: str = "sigmoid", label_smoothing: float = 0.0):
    """Each pair's loss from its log-ratios (P, 2) (see the module's docstring)."""
    h = ratios[:, 0] - ratios[:, 1]
    if loss == "ipo":
        return ops.square(h - 1.0 / (2.0 * beta))
    if loss != "sigmoid":
        raise ValueError(f"Argument `loss` must be one of {LOSSES}. Received: loss={loss!r}")
    return -(1.0 - label_smoothing) * ops.log_sigmoid(beta * h) - label_smoothing * ops.log_sigmoid(-beta * h)


@keras.saving.register_keras_serializable(package="theseus")
class PreferenceLoss(keras.losses.Loss):
    """The DPO or IPO loss of a batch of pairs, averaged over pairs.

    Args:
        beta: the KL strength β.
        loss: "sigmoid" (DPO) or "ipo".
        label_smoothing: ε of conservative DPO (sigmoid only).
    """

    def __init__(
        self, beta: float = 0.1, loss: str = "sigmoid", label_smoothing: float = 0.0, name: str = "dpo", **kwargs: Any
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"Argument `loss` must be one of {LOSSES}. Received: loss={loss!r}")
        kwargs.setdefault("dtype", "float32")  # targets are token ids: exact in float32, not in bfloat16
        super().__init__(name=name, **kwargs)
        self.beta, self.loss, self.label_smoothing = beta, loss, label_smoothing

    def call(self, y_true, y_pred):
        return pair_losses(log_ratios(y_true, y_pred), self.beta, self.loss, self.label_smoothing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta, "loss": self.loss, "label_smoothing": self.label_smoothing}


def reward_margin(y_true, y_pred, beta: float = 0.1):
    """Each pair's chosen reward minus its rejected reward, `β h` (P,)."""
    ratios = log_ratios(y_true, y_pred)
    return beta * (ratios[:, 0] - ratios[:, 1])


def reward_accuracy(y_true, y_pred, beta: float = 0.1):
    """1.0 where the chosen answer's reward is above the rejected one's (P,)."""
    return ops.cast(ops.greater(reward_margin(y_true, y_pred, beta), 0.0), "float32")


def preference_metrics(beta: float) -> list[keras.metrics.Metric]:
    """`reward_margin` and `reward_accuracy`, averaged over pairs (the metrics rows' columns)."""
    return [
        keras.metrics.MeanMetricWrapper(reward_margin, name="reward_margin", beta=beta),
        keras.metrics.MeanMetricWrapper(reward_accuracy, name="reward_accuracy", beta=beta),
    ]
