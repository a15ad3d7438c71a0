"""Training at scale: strategies, schedules, optimizers, accumulation.

Everything here is a thin, checked layer over `tf.distribute` and Keras 3's
own optimizers: `strategy()` picks MirroredStrategy / MultiWorkerMirroredStrategy
and fails fast on a dead worker; `warmup_cosine` and `adamw` set up the usual
fine-tuning recipe.
"""

from tfcompress.train.distribute import (
    ClusterConfigError,
    ClusterUnreachableError,
    check_model_in_scope,
    global_batch_size,
    read_tf_config,
    scale_learning_rate,
    strategy,
    wait_for_cluster,
)
from tfcompress.train.optimizers import NO_DECAY, adamw, warmup_cosine, with_accumulation
from tfcompress.train.sharing import share_layers

__all__ = [
    "ClusterConfigError",
    "ClusterUnreachableError",
    "NO_DECAY",
    "adamw",
    "check_model_in_scope",
    "global_batch_size",
    "read_tf_config",
    "scale_learning_rate",
    "share_layers",
    "strategy",
    "wait_for_cluster",
    "warmup_cosine",
    "with_accumulation",
]
