"""The three figures of a mineralogy report, drawn from a ``mineralogy.json`` document (one slide or a batch):
size distribution curves, cumulative liberation yield curves, the association heatmap."""

from __future__ import annotations

import io

import numpy as np

from minseg.data.classmap import default_color
from minseg.io.storage import Storage, join_uri
from minseg.mineralogy.sizes import CURVE_EDGES
from minseg.mineralogy.slide import main_minerals

SIZES_PLOT, LIBERATION_PLOT, ASSOCIATION_PLOT = "size_distribution.png", "liberation.png", "association.png"


def _save(figure, storage: Storage, uri: str) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    storage.write_bytes(uri, buffer.getvalue())


def write_plots(document: dict, storage: Storage, out_uri: str, title: str) -> list[str]:
    """Draw the figures under ``out_uri`` in the document's class ``colours`` (RGB per class; the class maps'
    default palette without). Returns the file names written: a figure with nothing to show (no mineral, no
    particle) is not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, unit = document["classes"], "µm" if document["unit"] == "um" else "px"
    tally = {k: np.asarray(v) for k, v in document["tally"].items()}
    minerals = [names.index(n) for n in main_minerals(document)]
    colours = document.get("colours") or [default_color(i) for i in range(len(names))]
    colour = {i: tuple(np.asarray(colours[i]) / 255.0) for i in range(len(names))}
    written = []

    # size distributions: cumulative % passing by mass (area for grains of one mineral), log ECD
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    upper = CURVE_EDGES[1:]
    if document["particles"] is not None and tally["particle_bins"].sum():
        pixels = tally["particle_bin_pixels"]
        density = document["densities"]
        weights = pixels @ np.asarray([density.get(n, 0.0) for n in names]) if not document["densities_missing"] \
            else pixels.sum(axis=1)
        axis.plot(upper, 100 * np.cumsum(weights) / max(weights.sum(), 1e-12), color="black", linewidth=2.2,
                  label="particles" + ("" if not document["densities_missing"] else " (by area)"))
    for i in minerals:
        area = tally["grain_bin_area"][i]
        if area.sum():
            axis.plot(upper, 100 * np.cumsum(area) / area.sum(), color=colour[i], linewidth=1.4,
                      label=f"{names[i]} grains")
    axis.set_xscale("log")
    occupied = np.flatnonzero(tally["grain_bin_area"].sum(axis=0) + tally["particle_bins"])
    if len(occupied):
        axis.set_xlim(CURVE_EDGES[max(0, occupied[0] - 1)], CURVE_EDGES[min(len(CURVE_EDGES) - 1, occupied[-1] + 2)])
    axis.axhline(80, color="grey", linewidth=0.6, linestyle=":")
    axis.set_ylim(0, 100)
    axis.set_xlabel(f"equivalent circle diameter ({unit})")
    axis.set_ylabel("cumulative % passing (mass)")
    axis.set_title(f"{title}: size distributions")
    if axis.lines[1:]:  # more than the 80 % line: something was measured
        axis.legend(fontsize=7, loc="lower right")
        _save(figure, storage, join_uri(out_uri, SIZES_PLOT))
        written.append(SIZES_PLOT)
    else:
        plt.close(figure)

    # cumulative liberation yield: % of each mineral's area in particles where its share is at least x %
    if document["liberation"] is not None:
        figure, axis = plt.subplots(figsize=(6.4, 4.2))
        for i in minerals:
            row = document["liberation"].get(names[i])
            if row and row["pixels"]:
                steps = [float(k[2:]) for k in row["yield_pct"]]
                axis.plot(steps, list(row["yield_pct"].values()), marker="o", markersize=3, color=colour[i],
                          label=f"{names[i]} ({row['liberated_pct']:.0f} % liberated)")
        axis.set_xlim(0, 100)
        axis.set_ylim(0, 102)
        axis.set_xlabel("mineral share of its particle, at least (% area)")
        axis.set_ylabel("% of the mineral's area (cumulative yield)")
        axis.set_title(f"{title}: liberation")
        if axis.lines:
            axis.legend(fontsize=7, loc="lower left")
            _save(figure, storage, join_uri(out_uri, LIBERATION_PLOT))
            written.append(LIBERATION_PLOT)
        else:
            plt.close(figure)

    # association: each mineral's boundary shared with every other class, free surface last
    rows = [names[i] for i in minerals if document["association"][names[i]]["boundary_px"]]
    if rows:
        partners = [names[i] for i in minerals]
        matrix = np.ma.masked_invalid([[document["association"][r]["shared_pct"].get(p, np.nan) for p in partners]
                                       + [document["association"][r]["free_surface_pct"]] for r in rows])
        figure, axis = plt.subplots(figsize=(len(partners) * 0.7 + 2.5, len(rows) * 0.55 + 1.8))
        image = axis.imshow(matrix, cmap="viridis", vmin=0, vmax=100)
        axis.set_xticks(range(len(partners) + 1), partners + ["free surface"], rotation=40, ha="right")
        axis.set_yticks(range(len(rows)), rows)
        for (r, c), value in np.ndenumerate(matrix.filled(0.0)):  # the masked diagonal: a mineral with itself
            if value >= 0.5:
                axis.text(c, r, f"{value:.0f}", ha="center", va="center", fontsize=7,
                          color="black" if value > 60 else "white")
        figure.colorbar(image, ax=axis, fraction=0.046, label="% of the row mineral's boundary")
        axis.set_title(f"{title}: association")
        _save(figure, storage, join_uri(out_uri, ASSOCIATION_PLOT))
        written.append(ASSOCIATION_PLOT)
    return written
