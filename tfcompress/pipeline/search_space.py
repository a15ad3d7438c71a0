"""The search space of `tune`: candidates and an estimate of their size, smallest first.

A candidate is a sparsity level, a cluster count, the layers kept in float (the most
sensitive first), PTQ or QAT, and (for litert-quantizer files) a weight width with the
layers one step wider. `SizeEstimator` orders them by the gzip size of the kernels
after each compression, computed on the base model's real weights.
"""

import gzip

import numpy as np

SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9)
CLUSTERS = (None, 32, 16, 8)
METHODS = ("ptq", "qat")  # PTQ first: same size, and it costs no training
BIT_WIDTHS = (8, 4, 2)
WIDER = {2: "int4", 4: "int8"}  # the step up for a layer too sensitive at a width
_ESTIMATE_CHUNK = 200_000  # weights per layer gzipped for a size estimate


def describe(candidate):
    """`"sparsity 0.8, 16 clusters, float [logits], QAT"` for a candidate or trial record."""
    clusters = candidate["clusters"]
    floats = candidate["float_layers"]
    bits = candidate.get("bits", 8)
    if bits != 8:
        wider = candidate.get("wider_layers") or ()
        weights = f"int{bits} weights" + (f" ({WIDER[bits]}: {list(wider)})" if wider else "")
        return f"sparsity {candidate['sparsity']:g}, {weights}, {candidate['method'].upper()}"
    return (
        f"sparsity {candidate['sparsity']:g}, "
        f"{f'{clusters} clusters' if clusters else 'no clustering'}, "
        f"{'float ' + str(list(floats)) if floats else 'all int8'}, "
        f"{candidate['method'].upper()}"
    )


def prunable_layers(base):
    """Names of the layers the prune stage would prune (its default skips some)."""
    from tfcompress import prune
    from tfcompress.prune.wrapper import PruneLowMagnitude

    try:
        wrapped = prune.prune_low_magnitude(base, 0.5)
    except Exception:  # a model that cannot be pruned: the search keeps sparsity 0
        return set()
    return {layer.layer.name for layer in wrapped.layers if isinstance(layer, PruneLowMagnitude)}


def kernels(model):
    found = {}
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and len(kernel.shape) >= 2:
            found[layer.name] = np.asarray(kernel.numpy(), dtype=np.float32).ravel()
    return found


def _gzip(array):
    return len(gzip.compress(array.tobytes(), compresslevel=6))


class SizeEstimator:
    """gzip bytes of each kernel after magnitude pruning, clustering and int8 (or float32).

    Computed on the base model's real weights, so it knows how each layer's
    values compress; the file's fixed overhead (biases, graph) is the same for
    every candidate and left out. It only orders the candidates.
    """

    def __init__(self, base, prunable):
        self.prunable = prunable
        self.kernels = {}
        self.scale = {}
        for name, w in kernels(base).items():
            if len(w) > _ESTIMATE_CHUNK:
                self.scale[name] = len(w) / _ESTIMATE_CHUNK
                w = w[:_ESTIMATE_CHUNK]
            self.kernels[name] = w
        self._cache = {}

    def layer_bytes(self, name, sparsity, clusters, is_float, bits=8):
        bits = 32 if is_float else bits
        key = (name, sparsity if name in self.prunable else 0.0, clusters, bits)
        if key not in self._cache:
            w = self.kernels[name].copy()
            if key[1] > 0:
                w[np.abs(w) <= np.quantile(np.abs(w), key[1])] = 0.0
            if clusters and len(w) > clusters:
                w = _cluster_values(w, clusters)
            if bits != 32:
                peak = float(np.max(np.abs(w))) or 1.0
                w = np.round(w / peak * (2 ** (bits - 1) - 1)).astype(np.int8)
                if bits < 8:  # packed as in the file: 8 // bits weights per byte
                    per_byte = 8 // bits
                    w = np.pad(w, (0, -len(w) % per_byte)).reshape(-1, per_byte)
                    w = sum(
                        (w[:, i].astype(np.uint8) & (2**bits - 1)) << (bits * i)
                        for i in range(per_byte)
                    ).astype(np.uint8)
            self._cache[key] = _gzip(w) * self.scale.get(name, 1.0)
        return self._cache[key]

    def __call__(self, sparsity, clusters, float_layers, bits=8, wider=()):
        def width(n):
            if n in wider:
                return int(WIDER[bits].removeprefix("int"))
            return bits

        return int(
            sum(
                self.layer_bytes(n, sparsity, clusters, n in float_layers, width(n))
                for n in self.kernels
            )
        )


def _cluster_values(w, k):
    """Each non-zero weight replaced by the nearest of `k` density-spaced values; zeros kept."""
    nonzero = w != 0
    if nonzero.sum() <= k:
        return w
    centroids = np.quantile(w[nonzero], (np.arange(k) + 0.5) / k)
    edges = (centroids[1:] + centroids[:-1]) / 2
    out = w.copy()
    out[nonzero] = centroids[np.searchsorted(edges, w[nonzero])]
    return out


def candidates(base, ranked, prunable, max_float_layers, bit_widths=(8,), bit_ranking=None):
    estimate = SizeEstimator(base, prunable)
    sparsities = SPARSITIES if prunable else (0.0,)
    float_counts = range(0, min(max_float_layers, len(ranked)) + 1)
    found = []
    for s in sparsities:
        if 8 in bit_widths:
            for k in CLUSTERS:
                for n in float_counts:
                    floats = tuple(ranked[:n])
                    size = estimate(s, k, set(floats))
                    for method in METHODS:
                        found.append(
                            dict(
                                sparsity=s,
                                clusters=k,
                                float_layers=floats,
                                method=method,
                                estimated_bytes=size,
                            )
                        )
        for bits in (b for b in bit_widths if b != 8):
            sensitive = (bit_ranking or {}).get(bits, [])
            for n in range(0, min(max_float_layers, len(sensitive)) + 1):
                wider = tuple(sensitive[:n])
                size = estimate(s, None, set(), bits, set(wider))
                for method in METHODS:
                    found.append(
                        dict(
                            sparsity=s,
                            clusters=None,
                            float_layers=(),
                            method=method,
                            estimated_bytes=size,
                            bits=bits,
                            wider_layers=wider,
                        )
                    )
    # Ties (same size): PTQ before QAT, fewer float layers first.
    found.sort(
        key=lambda c: (
            c["estimated_bytes"],
            METHODS.index(c["method"]),
            len(c["float_layers"]),
            -c["sparsity"],
        )
    )
    return found
