import numpy as np
import pytest

from tfcompress.prune import patterns


def _mask(scores, sparsity, pattern, axis=0):
    return np.asarray(patterns.compute_mask(scores, sparsity, patterns.parse(pattern), axis))


def test_unstructured_keeps_exactly_the_largest():
    scores = np.random.default_rng(0).random((16, 10)).astype("float32")
    mask = _mask(scores, 0.8, "unstructured")
    assert mask.sum() == 32
    assert scores[mask == 1].min() > scores[mask == 0].max()


def test_two_of_four_along_input_axis():
    scores = np.random.default_rng(1).random((8, 3)).astype("float32")
    mask = _mask(scores, 0.0, "2:4", axis=0)
    groups = mask.reshape(2, 4, 3)
    assert (groups.sum(axis=1) == 2).all()
    for g in range(2):
        for col in range(3):
            kept = scores.reshape(2, 4, 3)[g, :, col][groups[g, :, col] == 1]
            dropped = scores.reshape(2, 4, 3)[g, :, col][groups[g, :, col] == 0]
            assert kept.min() > dropped.max()


def test_conv_kernel_n_m_groups_input_channels():
    scores = np.random.default_rng(2).random((3, 3, 8, 4)).astype("float32")
    mask = _mask(scores, 0.0, "2:4", axis=-2)
    assert (mask.reshape(3, 3, 2, 4, 4).sum(axis=3) == 2).all()


def test_block_pattern_keeps_whole_blocks():
    scores = np.random.default_rng(3).random((8, 8)).astype("float32")
    mask = _mask(scores, 0.5, (1, 4))
    blocks = mask.reshape(8, 2, 4)
    assert set(np.unique(blocks.sum(axis=2))) <= {0, 4}
    assert mask.mean() == pytest.approx(0.5)


@pytest.mark.parametrize("bad", ["4:2", "2:x", "0:4", (0, 4), (1, 2, 3), "dense", 3])
def test_bad_patterns(bad):
    with pytest.raises(ValueError, match="Received: pattern="):
        patterns.parse(bad)


def test_pattern_that_does_not_tile():
    with pytest.raises(ValueError, match=r"'dense'.*2:4.*10 entries"):
        patterns.check_shape(patterns.parse("2:4"), (10, 3), 0, "dense")
    with pytest.raises(ValueError, match=r"'dense'.*block \(1, 4\)"):
        patterns.check_shape(patterns.parse((1, 4)), (10, 3), 0, "dense")
