"""Real data sets that load offline: scikit-learn's digits and GLUE's SST-2.

Importing this package is cheap: TensorFlow, keras-hub and scikit-learn are
imported only by the functions that need them.
"""

from tfcompress.data.digits import DatasetSplits, Splits, load_digits
from tfcompress.data.sst2 import TextSplits, load_sst2
from tfcompress.data.text import encode_for_bert, sst2_tokenizer

__all__ = [
    "DatasetSplits",
    "Splits",
    "TextSplits",
    "encode_for_bert",
    "load_digits",
    "load_sst2",
    "sst2_tokenizer",
]
