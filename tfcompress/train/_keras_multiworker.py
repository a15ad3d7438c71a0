"""Make Keras 3's `fit()` work under `MultiWorkerMirroredStrategy`.

Keras 3 (up to at least 3.15) fails there in two places, both reductions that
assume `MirroredStrategy` (keras-team/keras#20585):

1. `TensorFlowTrainer._maybe_symbolic_build` mean-reduces the first data
   batch across workers only to learn its shapes; a collective reduce of a
   `PerReplica` batch raises "Attempt to convert a value (PerReplica...)".
   Any replica's batch has the right shapes, so we take the first local one.
2. `reduce_per_replica` reduces scalar metrics with `axis=0`, which a
   0-dimensional tensor does not have. Scalars are reduced with `axis=None`.

`apply()` swaps in these two functions once; it changes nothing for other
strategies. Checked on Keras 3.15.1 / TF 2.21: two workers end training with
identical weights.
"""

_applied = False


def apply():
    """Install the two fixes (idempotent). Returns True if they are in place."""
    global _applied
    if _applied:
        return True
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    needed = ("TensorFlowTrainer", "reduce_per_replica", "_collective_all_reduce_multi_worker")
    if not all(hasattr(trainer, name) for name in needed):
        return False  # a Keras whose internals moved: leave it alone

    def first_local(strategy, value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = trainer.reduce_per_replica

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or not trainer._collective_all_reduce_multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(lambda v: first_local(strategy, v), batch)
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("mean", "auto") and trainer._collective_all_reduce_multi_worker(strategy):

            def _reduce(v):
                axis = None if first_local(strategy, v).shape.rank == 0 else 0
                return strategy.reduce("MEAN", v, axis=axis)

            return tree.map_structure(_reduce, values)
        return original_reduce(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    _applied = True
    return True
