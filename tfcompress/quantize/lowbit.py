"""Low-bit weight grids (litert-quantizer's, exactly) and honest storage accounting.

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

`storage_report` says what the quantized kernels of a QAT model take as
float32, int8 and packed n-bit.
"""

import dataclasses

import numpy as np

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
        raise ValueError(f"block_size must be one of {BLOCK_SIZES} (0 = channelwise). "
                         f"Received: block_size={block_size!r}")
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
        bound = tf.reduce_max(tf.abs(x), axis=list(range(len(shape) - 1)) or None,
                              keepdims=True)
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


@dataclasses.dataclass(frozen=True)
class StorageReport:
    """Kernel storage of a QAT model under different formats, in bytes.

    Attributes:
        rows: `(layer, scheme, weights, float32_bytes, int8_bytes, packed_bytes)`.
        float32_bytes / int8_bytes / packed_bytes: totals over quantized kernels
            (`packed` = `storage_bits` per weight + a float32 scale per channel).
    """

    rows: tuple

    @property
    def float32_bytes(self):
        return sum(r[3] for r in self.rows)

    @property
    def int8_bytes(self):
        return sum(r[4] for r in self.rows)

    @property
    def packed_bytes(self):
        return sum(r[5] for r in self.rows)

    def __str__(self):
        lines = [f"kernels: float32 {self.float32_bytes:,} B, int8 (what TFLite stores) "
                 f"{self.int8_bytes:,} B, packed {self.packed_bytes:,} B"]
        lines += [f"  {r[0]}: {r[1]}, {r[2]:,} weights -> {r[5]:,} B packed" for r in self.rows]
        return "\n".join(lines)


def storage_report(model):
    """Bytes the quantized kernels of a QAT model take as float32, int8 and packed n-bit.

    Args:
        model: a Keras 3 model from `quantize_model`.

    Returns:
        A `StorageReport`.

    Example:

    >>> qat = quantize_model(model, QuantizeConfig(weight_scheme="int4"))
    >>> storage_report(qat).packed_bytes  # about half of .int8_bytes
    """
    from tfcompress.quantize.composite import QuantizeComposite
    from tfcompress.quantize.layers import QuantizeWrapper
    from tfcompress.quantize.schemes import get_scheme

    rows = []
    for layer in model.layers:
        if isinstance(layer, QuantizeComposite):  # inner kernels: per tensor
            scheme = get_scheme(layer.weight_scheme)
            for sub, kernel in layer.kernels():
                n = int(np.prod(kernel.shape))
                scales = int(kernel.shape[-1]) if scheme.name == "binary" else 1
                packed = int(np.ceil(n * scheme.storage_bits / 8)) + 4 * scales
                rows.append((f"{layer.layer.name}/{sub.name}", scheme.name, n, 4 * n,
                             n + 4 * scales, packed))
            continue
        if not isinstance(layer, QuantizeWrapper) or layer.weight_scheme is None:
            continue
        kernel = getattr(layer.layer, layer.kernel_attr)
        n = int(np.prod(kernel.shape))
        channels = int(kernel.shape[-1])
        if layer.granularity == "depthwise":
            channels = int(kernel.shape[-1] * kernel.shape[-2])
        scheme = get_scheme(layer.weight_scheme)
        scales = channels if layer.granularity != "per_tensor" or scheme.name == "binary" else 1
        packed = int(np.ceil(n * scheme.storage_bits / 8)) + 4 * scales
        if scheme.litert_grid:  # float32 scale per channel, or float16 per block
            block = effective_block_size(kernel.shape, scheme.block_size)
            packed = int(np.ceil(n * scheme.storage_bits / 8)) + (
                2 * n // block if block else 4 * int(kernel.shape[-1]))
        rows.append((layer.layer.name, scheme.name, n, 4 * n, n + 4 * scales, packed))
    return StorageReport(tuple(rows))
