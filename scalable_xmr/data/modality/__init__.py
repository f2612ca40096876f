"""Modality datasets (SDML): ``dataset.json`` plus one Parquet table per modality, and converters.

Modules: ``info`` (dataset.json), ``table`` (one modality table: read, write, validate),
``dataset`` (a dataset directory or URI), converters ``xmedia``, ``h5``, ``mfeat`` and
``synthetic``.
"""
