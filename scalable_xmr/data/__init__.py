"""Datasets (dataset.json + one Parquet table per modality), converters and synthetic data.

See docs/data.md for the layout. Converters live in their own modules (``xmedia``, ``h5``,
``mfeat``, ``synthetic``) and are re-exported here; importing this package is cheap (no h5py or
scipy.io until a converter runs).
"""

from scalable_xmr.data.modality.dataset import (
    SPLITS,
    Dataset,
    DatasetInfo,
    ModalityInfo,
    SplitData,
    inspect_dataset,
    open_dataset,
    read_modality_table,
    write_dataset,
    write_modality_table,
)
from scalable_xmr.data.modality.h5 import convert_h5
from scalable_xmr.data.modality.mfeat import convert_mfeat, load_mfeat_views
from scalable_xmr.data.modality.synthetic import make_synthetic_xmedia, synthetic_modality
from scalable_xmr.data.modality.xmedia import convert_xmedia

__all__ = [
    "SPLITS",
    "Dataset",
    "DatasetInfo",
    "ModalityInfo",
    "SplitData",
    "convert_h5",
    "convert_mfeat",
    "convert_xmedia",
    "inspect_dataset",
    "load_mfeat_views",
    "make_synthetic_xmedia",
    "open_dataset",
    "read_modality_table",
    "synthetic_modality",
    "write_dataset",
    "write_modality_table",
]
