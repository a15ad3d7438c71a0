"""cache_teacher_outputs: run once, store atomically, detect other data, train from it."""

import keras
import numpy as np
import pytest

from tfcompress import distill


def ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def test_cache_round_trip_and_atomic_write(no_leftovers, digits, trained_cnn):
    folder, check = no_leftovers
    cache = distill.cache_teacher_outputs(trained_cnn, digits.x_train, folder / "t.npz")
    check("t.npz")
    np.testing.assert_allclose(
        cache.outputs, trained_cnn.predict(digits.x_train, verbose=0), atol=1e-5
    )
    loaded = distill.load_teacher_cache(folder / "t.npz")
    assert loaded.fingerprint == cache.fingerprint and loaded.top_k is None
    np.testing.assert_array_equal(loaded.outputs, cache.outputs)


def test_cache_from_other_data_is_detected(tmp_path, digits, trained_cnn):
    cache = distill.cache_teacher_outputs(trained_cnn, digits.x_train, tmp_path / "t.npz")
    with pytest.raises(distill.TeacherCacheMismatchError, match="other inputs.*1257 examples"):
        cache.dataset(digits.x_val, digits.y_val)
    same_size = digits.x_train.copy()
    same_size[0, 0, 0, 0] += 0.5  # one pixel differs: same size, other hash
    with pytest.raises(ValueError, match="sha256"):
        distill.load_teacher_cache(tmp_path / "t.npz").dataset(same_size, digits.y_train)


def test_top_k_decodes_to_teacher_order(tmp_path, digits, trained_cnn):
    cache = distill.cache_teacher_outputs(trained_cnn, digits.x_val, tmp_path / "k.npz", top_k=3)
    assert set(cache.outputs) == {"values", "indices"} and cache.outputs["values"].shape[-1] == 3
    dense = np.asarray(cache.decode({k: v[:16] for k, v in cache.outputs.items()}))
    full = trained_cnn.predict(digits.x_val[:16], verbose=0)
    np.testing.assert_array_equal(np.argmax(dense, -1), np.argmax(full, -1))
    top = np.argsort(-full, -1)[:, :3]
    np.testing.assert_allclose(
        np.take_along_axis(dense, top, -1), np.take_along_axis(full, top, -1), atol=1e-5
    )
    assert (np.sort(dense, -1)[:, :-3] < -1e8).all()


def test_training_from_cache(tmp_path, digits, trained_cnn, small_student_factory):
    cache = distill.cache_teacher_outputs(trained_cnn, digits.x_train, tmp_path / "t.npz")
    student = small_student_factory()
    d = distill.distiller(student, cache, alpha=0.1, temperature=4.0)
    assert d.uses_cache
    d.compile(optimizer=keras.optimizers.Adam(5e-3), loss=ce(), metrics=["accuracy"])
    history = d.fit(
        cache.dataset(digits.x_train, digits.y_train, batch_size=64), epochs=4, verbose=0
    )
    assert history.history["distillation_loss"][-1] < 0.5 * history.history["distillation_loss"][0]
    assert accuracy(student.predict(digits.x_test, verbose=0), digits.y_test) > 0.5
    with pytest.raises(ValueError, match=r"\(x, \(y, teacher_outputs\)\)"):
        d.fit(digits.x_train[:64], digits.y_train[:64], epochs=1, verbose=0)


def test_cache_with_dict_inputs(tmp_path, bert_data, trained_bert):
    inputs, _ = bert_data
    cache = distill.cache_teacher_outputs(trained_bert, inputs, tmp_path / "b.npz")
    assert set(cache.fingerprint.shapes) == {"padding_mask", "segment_ids", "token_ids"}
    cache.check(inputs)
