"""A base for the layer wrappers of every engine (pruning, quantization, clustering)."""

import keras


class Wrapper(keras.layers.Wrapper):
    """`keras.layers.Wrapper` whose `from_config` leaves the caller's config intact.

    Keras's own `Wrapper.from_config` pops `"layer"` out of the dict it is
    given, so a config could not be used twice; every tfcompress wrapper
    subclasses this instead.
    """

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return super().from_config(dict(config), custom_objects=custom_objects)
