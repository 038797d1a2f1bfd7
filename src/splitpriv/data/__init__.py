"""Datasets for split fine-tuning and privacy evaluation.

Named datasets come from a local folder laid out like ``shared/data`` (``$SPLITPRIV_DATA_DIR``), else from
the Hugging Face Hub; ``"sst2-sample"`` is a small SST-2 sample shipped in the package. Your own files load
with :func:`load_file`; public auxiliary text for attacks with :func:`load_public_text`.
"""

from splitpriv.data.core import DatasetNotFoundError, TextDataset
from splitpriv.data.files import load_file
from splitpriv.data.loaders import (
    available_datasets,
    data_dir,
    dataset_availability,
    load_dataset,
    load_public_text,
    public_corpus,
    public_in_domain,
    public_text_origin,
)

__all__ = [
    "DatasetNotFoundError",
    "TextDataset",
    "available_datasets",
    "data_dir",
    "dataset_availability",
    "load_dataset",
    "load_file",
    "load_public_text",
    "public_corpus",
    "public_in_domain",
    "public_text_origin",
]
