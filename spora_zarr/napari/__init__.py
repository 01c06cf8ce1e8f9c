"""The napari plugin (npe2 manifest ``napari.yaml``): a reader for cohort stores and a cohort browser widget.

Installed with the ``napari`` extra. Nothing here is imported by the rest of
spora_zarr; napari is imported only when a layer colour map or widget is made.
"""

from .reader import napari_get_reader, read_store, tissue_layers
from .widget import CohortBrowser, CohortWidget, add_layers

__all__ = ["CohortBrowser", "CohortWidget", "add_layers", "napari_get_reader", "read_store", "tissue_layers"]
