"""The model zoo: a tiny config of every family, trained briefly on real data while it is
pruned, through strip -> QAT -> int8 export -> verify -> .keras round trip (issues 17, 18).

Each family asserts: every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED of the int8
file computes in int8 or belongs to a layer the QAT report names as kept in float; the
int8 file matches its QAT model with cosine >= 0.99 and top-1 agreement >= 99% (or the
family's floor in AGREEMENT_FLOORS, with why); the outputs carry signal (better than
the majority class) and have not collapsed.
"""

import numpy as np
import pytest

from tfcompress import testing

N_TEST = 128
#: Training samples: digits images, or SST-2 phrases (short fragments: more are needed).
N_TRAIN = {"image": 1024, "text": 4096}
TEXT = ("lstm", "bert", "roberta", "distilbert", "gpt2")

#: Top-1 agreement of the int8 file with its QAT model: 99% (issue 18's target) unless a
#: family has a lower floor here, with the measurement that explains it. Every family
#: must still reach cosine >= 0.99 (issue 17's target). The floors sit below what these
#: families measure today so the test fails on a regression, not on tie noise.
#:
#: Since QAT rounds where the int8 kernels round (fused ReLU, Concatenate inputs,
#: LOGISTIC/TANH grids: docs/quantize.md), each layer matches the file but for ties
#: (< 1% of values off by one step). These deep, briefly trained nets amplify ties: the
#: SAME int8 file run by LiteRT's XNNPACK and by its builtin kernels agrees on only 93.8%
#: (mobilenet_v2), 95.3% (efficientnet_b0, nasnet_mobile) of top-1, so 99% against any
#: float simulation is out of reach on them. Open in issue 18 (bias rounding to int32 and
#: AveragePooling2D's requantization are not mirrored yet).
AGREEMENT_FLOORS = {
    # measured 94.53%, cosine 0.9938 (was 86.72%, 0.9681); kernels vs kernels 93.75%
    "mobilenet_v2": 0.90,
    # measured 97.66-98.44%, cosine 0.9961 (was 95.31%, 0.9934); kernels vs kernels 95.3%
    "efficientnet_b0": 0.95,
    # measured 94.53-95.31%, cosine 0.9968 (was 95.31%, 0.9947); kernels vs kernels 95.3%
    "nasnet_mobile": 0.90,
}


@pytest.mark.slow
@pytest.mark.parametrize("family", testing.ZOO_FAMILIES)
def test_family_survives_prune_qat_int8(family):
    floor = AGREEMENT_FLOORS.get(family, 0.99)
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
        min_agreement=floor,
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
    assert report.fidelity.cosine >= 0.99 and report.fidelity.top1_agreement >= floor
    assert not report.fidelity.collapsed and report.fidelity.warnings == ()
