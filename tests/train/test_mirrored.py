"""MirroredStrategy on two logical CPU devices: same result as one device."""

import json

from tfcompress.testing import run_on_logical_cpus

SCRIPT = """
import json
import numpy as np
import keras
from tfcompress import testing, train
from tfcompress.data import load_digits

data = load_digits()
x, y = data.x_train[:256], data.y_train[:256]

def fit(strategy):
    with strategy.scope():
        model = testing.digits_cnn(seed=0)
        model.compile(optimizer=keras.optimizers.SGD(0.05),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    train.check_model_in_scope(model, strategy)
    history = model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    return model, history.history

mirrored = train.strategy(devices=["/cpu:0", "/cpu:1"])
single = tf.distribute.OneDeviceStrategy("/cpu:0")
m_model, m_hist = fit(mirrored)
s_model, s_hist = fit(single)
diff = max(float(np.abs(a - b).max())
           for a, b in zip(m_model.get_weights(), s_model.get_weights()))

outside = testing.digits_cnn(seed=1)
try:
    train.check_model_in_scope(outside, mirrored)
    scope_error = ""
except ValueError as e:
    scope_error = str(e)
print(json.dumps({"replicas": mirrored.num_replicas_in_sync, "diff": diff,
                  "m_loss": m_hist["loss"], "s_loss": s_hist["loss"],
                  "scope_error": scope_error}))
"""


def test_mirrored_matches_single_device_and_catches_models_built_outside():
    result = json.loads(run_on_logical_cpus(SCRIPT).strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["diff"] < 1e-4
    for a, b in zip(result["m_loss"], result["s_loss"]):
        assert abs(a - b) < 1e-4
    assert "was built outside this MirroredStrategy's scope" in result["scope_error"]
