"""Automated-mineralogy statistics of class label maps (issue #17): modal mineralogy by area and weight,
mineral association (shared boundary lengths). Pure numpy on label arrays, so the segmentation job computes
them block by block and a standalone pass can compute them on any labels image; docs/mineralogy.md defines
each number and gives its source.
"""

from minseg.mineralogy.association import association_table, boundary_counts, seam_counts
from minseg.mineralogy.modal import DEFAULT_DENSITIES, modal_mineralogy

__all__ = ["DEFAULT_DENSITIES", "association_table", "boundary_counts", "modal_mineralogy", "seam_counts"]
