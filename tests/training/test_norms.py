import jax
import keras
import numpy as np
import pytest

from theseus.training.norms import NormTracking, track_norms


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
