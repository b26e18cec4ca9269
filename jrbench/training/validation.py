"""Whole-configuration validation: field checks plus the names against the registries.

:mod:`jrbench.config` holds plain dataclasses and imports no stage of the flow; this module
sits above the data sets, models and regularizers whose registries it consults, so the flow
config -> data -> model -> regularizer has no import cycle.
"""
from __future__ import annotations

from ..config import DataConfig, ModelConfig, RegConfig, RunConfig, check_fields
from ..errors import UserError
from ..schema import field_error
from ..data.datasets import DATASETS
from ..models.architectures import MODELS
from ..penalty.regularizers import REGULARIZERS


def validate(cfg: RunConfig) -> RunConfig:
    """``cfg`` itself if every name is registered and every field is in range; else raise
    :class:`jrbench.errors.UserError` naming the first bad one (with the valid choices).

    Where a config is checked: :func:`jrbench.training.loop.train`, before anything is loaded
    or written, is the one check of a config that is trained (``jrbench train`` builds its
    config and leaves the check to it); a study's spec reader checks every cell when the spec
    is read, so a bad cell is named with its line before any cell runs."""
    for cls, name, registry, values in ((DataConfig, "dataset", DATASETS, [cfg.data.dataset]),
                                        (ModelConfig, "name", MODELS, [cfg.model.name]),
                                        (RegConfig, "names", REGULARIZERS, list(cfg.reg.names))):
        for value in values:
            try:
                registry.get(value)
            except UserError as e:  # the error carries the field: a spec names its line
                raise field_error(cls, name, str(e), whole=True) from e
            except TypeError as e:
                raise field_error(cls, name, f"must be a name, got {value!r}.") from e
    check_fields(cfg)
    return cfg
