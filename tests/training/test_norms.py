import json

import jax
import keras
import numpy as np
import pytest
from keras.src.optimizers.base_optimizer import clip_by_global_norm as keras_clip_by_global_norm

from theseus.training.callbacks import MetricsLogger
from theseus.training.norms import NormTracking, clip_by_global_norm, global_norm, track_norms


def model_and_data():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    model.build((None, 5))
    rng = np.random.default_rng(0)
    return model, rng.normal(size=(16, 5)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")


def reference_gradient(weights, x, y):
    def loss(ws):
        h = jax.numpy.tanh(x @ ws[0] + ws[1])
        return ((h @ ws[2] + ws[3] - y) ** 2).mean()

    return jax.grad(loss)([jax.numpy.asarray(w) for w in weights])


@pytest.mark.parametrize("clip", [None, 0.01])
def test_the_optimizer_keeps_the_gradient_norm_before_clipping_and_the_update_norm(clip):
    model, x, y = model_and_data()
    optimizer = track_norms(keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.5, global_clipnorm=clip))
    model.compile(optimizer=optimizer, loss="mse")
    before = [np.array(w) for w in model.get_weights()]
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    gradient = reference_gradient(before, x, y)
    expected = np.sqrt(sum(float((np.asarray(g) ** 2).sum()) for g in gradient))
    assert float(np.array(optimizer.gradient_norm)) == pytest.approx(expected, rel=1e-5)
    change = np.sqrt(sum(((np.array(a) - b) ** 2).sum() for a, b in zip(model.get_weights(), before)))
    assert float(np.array(optimizer.update_norm)) == pytest.approx(change, rel=1e-5)


def test_tracking_keeps_the_class_and_happens_once():
    optimizer = keras.optimizers.Adam()
    tracked = track_norms(optimizer)
    assert tracked is optimizer and isinstance(optimizer, (NormTracking, keras.optimizers.Adam))
    assert type(optimizer).__name__ == "Adam" and keras.optimizers.serialize(optimizer)["class_name"] == "Adam"
    assert track_norms(optimizer) is optimizer and type(track_norms(keras.optimizers.Adam())) is type(optimizer)


def test_a_built_optimizer_cannot_start_tracking():
    optimizer = keras.optimizers.Adam()
    optimizer.build([keras.Variable(np.zeros(2, "float32"))])
    with pytest.raises(ValueError, match="needs an optimizer that is not built yet"):
        track_norms(optimizer)


@pytest.mark.parametrize("clip", [0.01, 100.0])
def test_clipping_with_the_tracked_norm_equals_keras(clip):
    """The norm computed once (on torch: one `_foreach_norm`) clips as Keras's `clip_by_global_norm` does."""
    rng = np.random.default_rng(2)
    grads = [keras.ops.convert_to_tensor(rng.normal(size=shape).astype("float32")) for shape in [(5, 8), (8,), (3,)]]
    ours = clip_by_global_norm(grads, global_norm(grads), clip)
    for got, expected in zip(ours, keras_clip_by_global_norm(grads, clip)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(expected), rtol=1e-6)
    infinite = [grads[0], keras.ops.full((3,), np.inf)]
    assert np.isnan(keras.ops.convert_to_numpy(clip_by_global_norm(infinite, global_norm(infinite), clip)[0])).all()


def test_norms_are_measured_on_the_logged_steps_and_equal_every_step_measuring(tmp_path):
    """On torch's eager step the norms are measured only for the steps `MetricsLogger` logs (on
    compiled steps always); the logged values are those measured at every step."""
    rows, measured = {}, {}
    for interval in (1, 2):
        model, x, y = model_and_data()
        optimizer = track_norms(keras.optimizers.AdamW(learning_rate=0.1, global_clipnorm=0.5))
        model.compile(optimizer=optimizer, loss="mse")
        seen = []
        spy = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(optimizer.measuring))
        logger = MetricsLogger(tmp_path / f"every-{interval}.jsonl", interval, 16, 0, 5)
        model.fit(
            np.tile(x, (5, 1)), np.tile(y, (5, 1)), batch_size=16, shuffle=False, verbose=0, callbacks=[logger, spy]
        )
        rows[interval] = [json.loads(line) for line in (tmp_path / f"every-{interval}.jsonl").read_text().splitlines()]
        measured[interval] = seen
    eager = keras.backend.backend() == "torch"
    assert measured[2] == ([False, True, False, True, True] if eager else [True] * 5)
    logged = {row["step"]: row for row in rows[1]}
    assert [row["step"] for row in rows[2]] == [2, 4, 5]
    for row in rows[2]:
        for key in ("grad_norm", "update_norm"):
            assert row[key] == pytest.approx(logged[row["step"]][key], rel=1e-6)
