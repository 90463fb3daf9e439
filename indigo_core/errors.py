"""Errors the pack raises for bad input. Each message says what was expected and what came."""

from __future__ import annotations


class IndigoError(Exception):
    """Base class of every error the pack raises on purpose."""


class ConfigError(IndigoError, ValueError):
    """An INN, estimator or guidance configuration is invalid."""


class ConfigTypeError(ConfigError, TypeError):
    """An object of the wrong kind where a configuration or a network was expected (also a
    TypeError, for callers that catch that)."""


class ShapeError(IndigoError, ValueError):
    """A tensor's shape, channel count, size or batch does not fit (message: expected vs got)."""


class DomainError(IndigoError, ValueError):
    """An INN's domain (pixel/latent) or channel count does not match the model or VAE it is used with."""


class WeightsFileError(IndigoError, ValueError):
    """A weights file cannot be used: missing, truncated, unknown format version, or tensors that do
    not match its config. The message names the file and the mismatch."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsafePickleError(WeightsFileError):
    """A legacy pickle asked to build something other than tensors and plain containers."""


class InputValueError(IndigoError, ValueError):
    """An image or latent holds NaN/inf or values outside the documented range."""


class WeightsExistError(WeightsFileError, FileExistsError):
    """Saving would overwrite an existing weights file and `overwrite=True` was not given."""


class DatasetError(IndigoError, ValueError):
    """A training or evaluation image folder cannot be used: missing, empty, unreadable files, or
    images too small for the requested crop. The message names the folder and the files."""


class TrainingError(IndigoError, RuntimeError):
    """A training run cannot start or resume: output folder in the way, checkpoint that does not
    match the run's settings, or a distributed set-up that does not fit."""
