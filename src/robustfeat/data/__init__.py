"""Datasets as in-memory uint8 tensors, training splits, batch loading and batched augmentation.

Importing this package registers every built-in dataset (each module registers its own).
"""

import importlib
import pkgutil

from ._registry import (
    DATASETS,
    SPLITS,
    check_dataset_spec,
    dataset_options,
    list_datasets,
    load_dataset,
    register_dataset,
    register_path_form,
)
from .base import ImageDataset
from .folder import cache_dir
from .loader import BatchLoader, iterate_batches
from .splits import NOISE_TYPES, DataSplits, evaluation_split, prepare_data
from .transforms import (
    PADDING_MODES,
    Augment,
    RandomCrop,
    RandomHorizontalFlip,
    crop_at,
    default_train_augment,
    random_crop,
    random_hflip,
)

# Each module registers its datasets on import; new dataset files need no edit here.
for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
