"""Models: where they live (``locator``), how weights load safely (``weights``), the loaded-model cache (``cache``)."""

from .cache import MODEL_CACHE, ModelCache, free_models, release_accelerator_memory
from .locator import (
    MODEL_FOLDERS,
    MODELS_DIR_ENV,
    FolderSpec,
    ModelLocator,
    default_models_dir,
    get_locator,
    missing_model_message,
    models_dir_locator,
    set_locator,
)
from .weights import file_fingerprint, load_state_dict

__all__ = [
    "MODELS_DIR_ENV", "MODEL_CACHE", "MODEL_FOLDERS", "FolderSpec", "ModelCache", "ModelLocator", "default_models_dir",
    "file_fingerprint", "free_models", "get_locator", "load_state_dict", "missing_model_message", "models_dir_locator",
    "release_accelerator_memory", "set_locator",
]
