"""Matplotlib figures that a notebook shows, and their PNG bytes: what every picture module draws on.

The figures are built without pyplot: no global figure state to close, and no backend chosen for the importer.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

DPI = 100
"""Pixels per inch of the PNGs, written or shown in a notebook."""


class NotebookFigure(Figure):
    """A Figure that Jupyter shows as a PNG whether or not pyplot's inline backend was set up."""

    def _repr_png_(self) -> bytes:
        return png(self)


def png(fig: Figure) -> bytes:
    """``fig`` as the bytes of a PNG file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
