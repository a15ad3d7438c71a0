"""The model zoo: a tiny config of every family, trained briefly on real data while it is
pruned, through strip -> QAT -> int8 export -> verify -> .keras round trip (issues 17, 18).

Each family asserts: every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED of the int8
file computes in int8 or belongs to a layer the QAT report names as kept in float; the
int8 file matches its QAT model with cosine >= 0.99 and top-1 agreement >= 99% (issue
18's target; the QAT model rounds where the int8 kernels round: the int32 bias, average
pooling, requantized Concatenate inputs and merged twin layers included, see
docs/quantize.md); the outputs carry signal (better than the majority class) and have
not collapsed.
"""

import numpy as np
import pytest

from tfcompress import testing

#: Held-out samples: one top-1 flip is 0.4% of them (99% allows two).
N_TEST = 256
#: Training samples: digits images, or SST-2 phrases (short fragments: more are needed).
N_TRAIN = {"image": 1024, "text": 4096}
TEXT = ("lstm", "bert", "roberta", "distilbert", "gpt2")


@pytest.mark.slow
@pytest.mark.parametrize("family", testing.ZOO_FAMILIES)
def test_family_survives_prune_qat_int8(family):
    model = testing.zoo_model(family)
    train, test = testing.zoo_data(
        model, family, n_train=N_TRAIN["text" if family in TEXT else "image"], n_test=N_TEST
    )
    # The pruning phase (3 epochs at 3e-3, BatchNorm statistics recomputed after it) is
    # the model's brief training: one traced fit less per family than training first.
    report = testing.check_model(
        model,
        train,
        eval_data=test,
        prune_epochs=3,
        prune_learning_rate=3e-3,
        min_agreement=0.99,
        raise_on_failure=False,
    )
    failed = [f"{step}: {outcome}" for step, outcome in report.steps if outcome[:2] != "ok"]
    assert not failed, str(report)
    baseline = np.bincount(test[1]).max() / len(test[1])
    assert report.pruned_accuracy is not None and report.pruned_accuracy > baseline + 0.05, (
        f"{family}: the outputs carry no signal to verify against (held-out accuracy "
        f"after training and pruning below the majority class {baseline:.2%} + 5%)\n{report}"
    )
    assert report.ok, str(report)
    assert report.unexplained_float_ops == ()
    assert report.fidelity.cosine >= 0.99 and report.fidelity.top1_agreement >= 0.99
    assert not report.fidelity.collapsed and report.fidelity.warnings == ()
