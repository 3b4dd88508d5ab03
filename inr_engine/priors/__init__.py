"""Priors: network weights in safetensors, JSON metadata in its header, a SHA256 manifest.

:mod:`.store` reads, writes and lists prior files; :mod:`.metadata` checks what their metadata
holds. Opening a prior completely (building its networks) is :mod:`inr_engine.cli.prior_check`.
"""

from .metadata import (
    AUTO,
    CONFIG_VALUES,
    DEFAULT_PRIORS,
    KNOWN_TASKS,
    LOAD_ADVICE,
    SCAN_SHAPE_PRIOR,
    SEGMENTATION_TASKS,
    SHAPE_COMPLETION_TASK,
    PriorError,
    check_metadata,
    config_value_problem,
    default_shape_prior,
    error_summary,
    typed_config,
)
from .store import (
    BUNDLED_DIR,
    EDITABLE_METADATA,
    MANIFEST,
    PRIOR_FORMAT,
    PRIOR_FORMAT_VERSION,
    Prior,
    build_network,
    bundled_priors,
    initialisation_tensors,
    load_prior,
    prior_config,
    read_metadata,
    resolve,
    save_prior,
    set_metadata,
    sha256,
    shape_prior_for,
    write_manifest,
)

__all__ = [
    "AUTO", "BUNDLED_DIR", "CONFIG_VALUES", "DEFAULT_PRIORS", "EDITABLE_METADATA", "KNOWN_TASKS", "LOAD_ADVICE",
    "MANIFEST", "PRIOR_FORMAT", "PRIOR_FORMAT_VERSION", "SCAN_SHAPE_PRIOR", "SEGMENTATION_TASKS",
    "SHAPE_COMPLETION_TASK", "Prior", "PriorError", "build_network", "bundled_priors", "check_metadata",
    "config_value_problem", "default_shape_prior", "error_summary", "initialisation_tensors", "load_prior",
    "prior_config", "read_metadata", "resolve", "save_prior", "set_metadata", "sha256", "shape_prior_for",
    "typed_config", "write_manifest",
]
