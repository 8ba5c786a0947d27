"""The package's version, in a leaf module: everything that reports it imports this, not the package itself."""

from __future__ import annotations

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """The versions a saved result depends on: ours, torch's and numpy's."""
    import numpy
    import torch

    return {"inceptionv3": __version__, "torch": torch.__version__, "numpy": numpy.__version__}


__all__ = ["__version__", "versions"]
