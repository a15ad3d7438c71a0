"""litert-quantizer's int4 / int2 weight grid, as a straight-through fake-quant.

`litert_grid` fake-quantizes a kernel onto the grid litert-quantizer 0.11
writes into a `.tflite` file (`tfcompress.export.lowbit`), so a model trained
with the `"int4"`, `"int4_block32"`, ... schemes exports with its weights
unchanged. The grid (read from litert-quantizer's
`uniform_quantize_tensor.py`), per output channel or per block of
`block_size` consecutive inputs of one output channel:

- symmetric, zero point 0: `scale = max(max|w|, 1e-9) / (2**(bits-1) - 1)`;
- blockwise scales are rounded to bfloat16, then stored as float16;
- `q = clip(rint(w / scale), -2**(bits-1), 2**(bits-1) - 1)` (round half to
  even; the most negative level is never reached, so int4 has 15 levels and
  int2 is ternary);
- the file holds `q` packed (2 per byte for int4, 4 per byte for int2) and
  dequantizes to `q * scale`.

Blocks run along the input axis of a 2-D (Dense) kernel; a kernel that is not
2-D, or whose input size is not a multiple of the block size, gets the
channelwise grid (the quantizer cannot block it either).
"""

#: Block sizes litert-quantizer supports (0 = one scale per output channel).
BLOCK_SIZES = (0, 32, 64, 128)
#: Weight widths litert-quantizer packs.
LOW_BITS = (4, 2)


def effective_block_size(kernel_shape, block_size):
    """The block size the grid uses for a kernel: `block_size`, or 0 (channelwise).

    Args:
        kernel_shape: the Keras kernel's shape (channels last).
        block_size: the requested block size (0 for channelwise).

    Returns:
        `block_size` for a 2-D kernel whose input size it divides, else 0.
    """
    shape = tuple(int(d) for d in kernel_shape)
    if block_size and len(shape) == 2 and shape[0] % block_size == 0:
        return int(block_size)
    return 0


def litert_grid(w, num_bits, block_size=0):
    """Fake-quantize kernel `w` onto litert-quantizer's symmetric int grid.

    The forward value is exactly `q * scale` as the `.tflite` file dequantizes
    it (bit for bit); the gradient is the identity (straight-through).

    Args:
        w: the kernel, channels (outputs) on the last axis, inputs on axis 0.
        num_bits: 4 or 2.
        block_size: 0 for one scale per output channel, or 32, 64, 128 for
            one scale per block of inputs (see `effective_block_size`).

    Returns:
        A float32 tensor of `w`'s shape.

    Example:

    >>> wq = litert_grid(tf.random.normal([64, 10]), num_bits=4, block_size=32)
    """
    import tensorflow as tf

    if num_bits not in LOW_BITS:
        raise ValueError(f"litert_grid packs {LOW_BITS} bits. Received: num_bits={num_bits!r}")
    if block_size not in BLOCK_SIZES:
        raise ValueError(
            f"block_size must be one of {BLOCK_SIZES} (0 = channelwise). "
            f"Received: block_size={block_size!r}"
        )
    w = tf.cast(tf.convert_to_tensor(w), tf.float32)
    shape = w.shape
    qmax = float(2 ** (num_bits - 1) - 1)
    qmin = -float(2 ** (num_bits - 1))
    block = effective_block_size(shape, block_size)
    x = tf.stop_gradient(w)
    if block:
        x = tf.reshape(x, [shape[0] // block, block, shape[1]])
        bound = tf.reduce_max(tf.abs(x), axis=1, keepdims=True)
    else:
        bound = tf.reduce_max(tf.abs(x), axis=list(range(len(shape) - 1)) or None, keepdims=True)
    scale = tf.maximum(bound, 1e-9) / qmax
    if block:  # stored as float16 after rounding to bfloat16's 7-bit mantissa
        scale = tf.cast(tf.cast(tf.cast(scale, tf.bfloat16), tf.float16), tf.float32)
    else:  # the scale the quantizer re-derives from the grid values (max |q| = qmax)
        scale = (scale * qmax) / qmax
    # divide_no_nan: an all-zero block's float16 scale underflows to 0; its
    # weights stay 0, as in the file.
    q = tf.clip_by_value(tf.round(tf.math.divide_no_nan(x, scale)), qmin, qmax)
    wq = tf.reshape(q * scale, shape)
    # wq + (w - w): the forward value is wq exactly, the gradient flows to w.
    return wq + (w - tf.stop_gradient(w))
