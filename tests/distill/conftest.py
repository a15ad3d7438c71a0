"""Fixtures for the distillation tests (the session fixtures of tests/conftest.py apply too)."""

import pytest


@pytest.fixture(scope="session")
def small_student_factory():
    """Makes a fresh small digits CNN (about 6x fewer parameters than the teacher)."""
    from tfcompress import testing

    def make(seed=1, name="student"):
        return testing.digits_cnn(filters=(4, 8), dense_units=16, seed=seed, name=name)

    return make


@pytest.fixture(scope="session")
def tiny_bert_teacher(bert_data):
    """A 2-block keras-hub BertTextClassifier (hidden 16), trained one epoch."""
    import keras

    from tfcompress import testing

    model = testing.tiny_bert_classifier(num_layers=2, hidden_dim=16, intermediate_dim=32, seed=2)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    inputs, labels = bert_data
    model.fit(inputs, labels, epochs=1, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="session")
def trained_cnn(trained_cnn):
    """A private copy: keras.distillation.Distiller freezes its teacher (trainable=False),
    and the session-wide model must stay trainable for the other test folders."""
    import keras

    copy = keras.models.clone_model(trained_cnn)
    copy.set_weights(trained_cnn.get_weights())
    return copy
