"""One family of errors for everything a user can get wrong: a bad input, checkpoint, download or dataset.

The CLI prints an ``InceptionV3Error`` as one line naming the file or argument; anything else is a bug and keeps
its traceback. Each class also derives from the builtin a caller would naturally catch (``ValueError``,
``RuntimeError``)."""

from __future__ import annotations


class InceptionV3Error(Exception):
    """The base of every error this package raises on purpose; its message is meant for the user."""


class InputError(InceptionV3Error, ValueError):
    """An argument or input file that cannot be used as given."""


class UnknownModelError(InputError, KeyError):
    """A name that is neither in the zoo nor an existing file (a ``KeyError`` too: a failed lookup)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class CheckpointError(InceptionV3Error, ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


class DownloadError(InceptionV3Error, RuntimeError):
    """No URL gave a verified file; the message lists what was tried and what to do instead."""


class DatasetError(InceptionV3Error, ValueError):
    """A dataset that cannot be scored or trained on as given; the message names the first few offenders."""


class ExportError(InceptionV3Error, RuntimeError):
    """An export that could not be written or did not reproduce eager PyTorch."""


__all__ = ["CheckpointError", "DatasetError", "DownloadError", "ExportError", "InceptionV3Error", "InputError",
           "UnknownModelError"]
