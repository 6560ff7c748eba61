"""A slide's mineralogy from its blocks, streamed: what ``segment`` computes as blocks finish and ``measure``
computes on an existing label map, to the same numbers.

``measure_block`` labels one block (``components``); ``SlideMineralogy`` takes the blocks one at a time in any
order, writes the objects whole inside a block straight to the per-object tables, keeps only what crosses
blocks, and at ``finish`` joins those across seams and returns the ``mineralogy.json`` document. Its
additive part, the ``Tally``, sums over slides for a batch report (``report``). docs/mineralogy.md defines
every number.
"""

from __future__ import annotations

import contextlib
import math
from functools import cached_property
from dataclasses import dataclass, fields

import numpy as np

from minseg.io.storage import Storage, join_uri
from minseg.mineralogy.association import association_table
from minseg.mineralogy.components import (AREA, BOTTOM, LEFT, PERIMETER, RIGHT, SUM_X, SUM_Y, TOP, BlockGrains,
                                          BlockParticles, SizeFractions, label_grains, label_particles)
from minseg.mineralogy.config import MAX_PIXEL_SIZE_UM, MineralogySettings
from minseg.mineralogy.grains import grain_statistics
from minseg.mineralogy.liberation import liberation_classes, liberation_table
from minseg.mineralogy.merge import GrainMerger, ParticleMerger, touching_edge
from minseg.mineralogy.modal import DEFAULT_DENSITIES, modal_mineralogy
from minseg.mineralogy.sizes import (CURVE_EDGES, QUANTILES, binned_passing_size, ecd, fraction_names,
                                     size_bins, size_distribution)

GRAINS_TABLE, PARTICLES_TABLE, DOCUMENT = "grains.parquet", "particles.parquet", "mineralogy.json"
_ROW_GROUP = 65_536  # table rows buffered per parquet row group (blocks with few objects would make tiny groups)


def _folded(table: dict[str, float]) -> dict[str, float]:
    return {name.casefold(): value for name, value in table.items()}


@dataclass(frozen=True)
class MeasureSpec:
    """What a slide is measured with: its class names, the ``mineralogy`` settings, its pixel size (µm per
    pixel of the measured level; None: sizes and lengths in pixels)."""

    names: tuple[str, ...]
    settings: MineralogySettings
    pixel_size_um: float | None = None

    def __post_init__(self) -> None:
        """Raises ValueError for a pixel size that is not a number above 0 and below ``MAX_PIXEL_SIZE_UM`` (inf
        would make every size inf and reach the JSON documents as ``Infinity``; 1e200 overflowed areas)."""
        size = self.pixel_size_um
        if size is not None and not (isinstance(size, (int, float)) and not isinstance(size, bool)
                                     and math.isfinite(size) and 0 < size < MAX_PIXEL_SIZE_UM):
            raise ValueError(f"pixel size {size!r} µm is not a number above 0 and below {MAX_PIXEL_SIZE_UM:g} (1 m)")

    @cached_property
    def sample(self) -> np.ndarray:
        """(C,) bool: the classes that are sample (not background)."""
        return np.asarray([name not in self.background for name in self.names], bool)

    @cached_property
    def background(self) -> frozenset[str]:
        """The class names that are background: ``background_classes`` as written in any case (a mask's
        ``Background`` or ``Resin`` class is not a mineral)."""
        wanted = {name.casefold() for name in self.settings.background_classes}
        return frozenset(name for name in self.names if name.casefold() in wanted)

    @property
    def has_particles(self) -> bool:
        """Without a background class the whole section would be one particle: no particle statistics."""
        return not self.sample.all()

    @cached_property
    def fractions(self) -> SizeFractions:
        return SizeFractions(tuple(self.settings.size_fractions), self.pixel_size_um)

    @property
    def edges(self) -> tuple[int, ...]:
        return tuple(self.settings.liberation_classes)

    @cached_property
    def densities(self) -> dict[str, float]:
        """g/cm³ by name: the built-in table with ``mineralogy.densities`` over it. A class takes, in this order,
        the user's entry spelt as it is, the user's entry in any case (``Pyrite: 5.2`` for a class ``pyrite``), the
        built-in entry spelt as it is, the built-in entry in any case."""
        user = self.settings.densities
        lookups = [(user, str), (_folded(user), str.casefold), (DEFAULT_DENSITIES, str),
                   (_folded(DEFAULT_DENSITIES), str.casefold)]  # each table, and how a class name is looked up in it
        merged = {**DEFAULT_DENSITIES, **user}
        for name in self.names:
            found = next((table[key(name)] for table, key in lookups if key(name) in table), None)
            if found is not None:
                merged[name] = found
        return merged

    @property
    def unit(self) -> str:
        return "um" if self.pixel_size_um else "px"

    def key(self) -> dict:
        """What block measurements depend on: an interrupted slide's blocks are reused only when it matches."""
        return {"classes": list(self.names), "connectivity": self.settings.connectivity,
                "min_grain_px": self.settings.min_grain_px, "sample": self.sample.tolist(),
                "size_fractions": list(self.settings.size_fractions), "liberation_classes": list(self.edges),
                "pixel_size_um": self.pixel_size_um}


@dataclass
class BlockMineralogy:
    """One block's grains and particles (``components``), as named arrays for a block record."""

    grains: BlockGrains
    particles: BlockParticles

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {**self.grains.to_arrays(), **self.particles.to_arrays()}

    @classmethod
    def from_arrays(cls, arrays) -> "BlockMineralogy":
        return cls(BlockGrains.from_arrays(arrays), BlockParticles.from_arrays(arrays))


def measure_block(labels: np.ndarray, top: int, left: int, spec: MeasureSpec) -> BlockMineralogy:
    """Grains and particles of a (h, w) uint8 block of class ids at (top, left) of the slide.

    Raises:
        ValueError: a label is not a class id.
    """
    settings = spec.settings
    # without a background class there are no particles to measure (the section would be one): none labelled
    sample = spec.sample if spec.has_particles else np.zeros(len(spec.names), bool)
    return BlockMineralogy(
        label_grains(labels, top, left, len(spec.names), settings.connectivity, settings.min_grain_px),
        label_particles(labels, top, left, sample, settings.connectivity, spec.edges, settings.min_grain_px,
                        spec.fractions),
    )


@dataclass
class Tally:
    """A slide's (or a batch's) mineralogy as additive counts: two slides' tallies add up to their union's.

    Attributes:
        class_pixels: (C,) pixels per class.
        boundary: (C, C) pixel edges between classes (``association.boundary_counts``).
        liberation: (F, C, B) pixels of each mineral per size fraction and liberation class.
        fraction_particles: (F,) particles per size fraction.
        particles, noise_particles, touching_edge: particle counts (noise: under the threshold).
        grains, noise_grains: (C,) grains per class, at least the threshold and under it.
        particle_bins: (N,) particles per size-curve bin (``sizes.CURVE_EDGES``); particle_bin_pixels: (N, C)
            their summed composition (area and mass per bin).
        grain_bins, grain_bin_area: (C, N) grains per class and curve bin, and their area.
    """

    class_pixels: np.ndarray
    boundary: np.ndarray
    liberation: np.ndarray
    fraction_particles: np.ndarray
    particles: int
    noise_particles: int
    touching_edge: int
    grains: np.ndarray
    noise_grains: np.ndarray
    particle_bins: np.ndarray
    particle_bin_pixels: np.ndarray
    grain_bins: np.ndarray
    grain_bin_area: np.ndarray

    def __add__(self, other: "Tally") -> "Tally":
        return Tally(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def to_json(self) -> dict:
        return {f.name: np.asarray(getattr(self, f.name)).tolist() for f in fields(self)}

    @classmethod
    def from_json(cls, document: dict) -> "Tally":
        return cls(**{f.name: (np.asarray(document[f.name], np.int64) if isinstance(document[f.name], list)
                               else int(document[f.name])) for f in fields(cls)})


class ObjectTables:
    """``grains.parquet`` and ``particles.parquet`` (a row per object of at least the noise threshold), written
    as objects arrive, a row group at a time (never the slide's objects all in memory).

    Columns: ``grain_id`` / ``particle_id``; ``class`` (grains); ``area_px``, ``perimeter_px`` (pixel edges of
    the outline), ``ecd_px`` and the same in µm (``area_um2``, ``perimeter_um``, ``ecd_um``; null without a
    pixel size); ``bbox_top``, ``bbox_left``, ``bbox_bottom``, ``bbox_right`` (slide pixels, bottom/right
    exclusive); ``centroid_y``, ``centroid_x`` (slide pixels); ``touching_edge`` (cut by the slide's edge);
    particles also ``px:<class>`` for each sample class: its composition in pixels.
    """

    def __init__(self, spec: MeasureSpec, height: int, width: int, grains_path: str,
                 particles_path: str | None):
        import pyarrow as pa

        self.spec, self.height, self.width = spec, height, width
        geometry = [("area_px", pa.int64()), ("perimeter_px", pa.int64()), ("ecd_px", pa.float64()),
                    ("area_um2", pa.float64()), ("perimeter_um", pa.float64()), ("ecd_um", pa.float64()),
                    ("bbox_top", pa.int64()), ("bbox_left", pa.int64()), ("bbox_bottom", pa.int64()),
                    ("bbox_right", pa.int64()), ("centroid_y", pa.float64()), ("centroid_x", pa.float64()),
                    ("touching_edge", pa.bool_())]
        self.minerals = [i for i, sample in enumerate(spec.sample) if sample]
        self._tables = {"grains": _TableFile(grains_path, pa.schema(
            [("grain_id", pa.int64()), ("class", pa.string())] + geometry))}
        if particles_path is not None:
            composition = [(f"px:{spec.names[i]}", pa.int64()) for i in self.minerals]
            self._tables["particles"] = _TableFile(particles_path, pa.schema(
                [("particle_id", pa.int64())] + geometry + composition))

    def _geometry(self, shapes: np.ndarray) -> dict[str, np.ndarray]:
        area = shapes[:, AREA]
        size = self.spec.pixel_size_um
        missing = np.full(len(area), np.nan)
        return {
            "area_px": area, "perimeter_px": shapes[:, PERIMETER], "ecd_px": ecd(area),
            "area_um2": area * size**2 if size else missing, "perimeter_um": shapes[:, PERIMETER] * size if size
            else missing, "ecd_um": ecd(area, size) if size else missing,
            "bbox_top": shapes[:, TOP], "bbox_left": shapes[:, LEFT], "bbox_bottom": shapes[:, BOTTOM],
            "bbox_right": shapes[:, RIGHT], "centroid_y": shapes[:, SUM_Y] / np.maximum(area, 1),
            "centroid_x": shapes[:, SUM_X] / np.maximum(area, 1),
            "touching_edge": touching_edge(shapes, self.height, self.width),
        }

    def add_grains(self, klass: np.ndarray, shapes: np.ndarray) -> None:
        table = self._tables["grains"]
        names = np.asarray(self.spec.names, object)
        table.add({"grain_id": table.next_ids(len(shapes)), "class": names[klass.astype(np.int64)],
                   **self._geometry(shapes)})

    def add_particles(self, composition: np.ndarray, shapes: np.ndarray) -> None:
        table = self._tables.get("particles")
        if table is None:
            return
        table.add({"particle_id": table.next_ids(len(shapes)), **self._geometry(shapes),
                   **{f"px:{self.spec.names[i]}": composition[:, i] for i in self.minerals}})

    def close(self) -> dict[str, int]:
        """Write what is buffered and close the files; returns the rows of each table."""
        return {name: table.close() for name, table in self._tables.items()}

    def abort(self) -> None:
        for table in self._tables.values():
            table.abort()


class _TableFile:
    """One parquet file filled row group by row group."""

    def __init__(self, path: str, schema):
        self.path, self.schema = path, schema
        self.rows, self._buffer, self._buffered, self._writer = 0, [], 0, None

    def next_ids(self, count: int) -> np.ndarray:
        ids = np.arange(self.rows + self._buffered, self.rows + self._buffered + count, dtype=np.int64)
        return ids

    def add(self, columns: dict[str, np.ndarray]) -> None:
        count = len(next(iter(columns.values())))
        if not count:
            return
        self._buffer.append(columns)
        self._buffered += count
        if self._buffered >= _ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        if self._buffer:
            arrays = [pa.array(np.concatenate([part[name.name] for part in self._buffer]), type=name.type,
                               from_pandas=True) for name in self.schema]  # NaN -> null: no pixel size
            self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self.rows += self._buffered
        self._buffer, self._buffered = [], 0

    def close(self) -> int:
        self._flush()
        self._writer.close()
        return self.rows

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()


@contextlib.contextmanager
def staged_tables(spec: MeasureSpec, height: int, width: int, storage: Storage, out_uri: str):
    """The slide's ``ObjectTables`` (None when ``mineralogy.tables`` is off) on local files published to
    ``out_uri`` when the block exits without error; on error nothing is published."""
    if not spec.settings.tables:
        yield None
        return
    with contextlib.ExitStack() as stack:
        grains = stack.enter_context(storage.staged_output(join_uri(out_uri, GRAINS_TABLE), ".parquet"))
        particles = stack.enter_context(storage.staged_output(join_uri(out_uri, PARTICLES_TABLE), ".parquet")) \
            if spec.has_particles else None
        tables = ObjectTables(spec, height, width, grains, particles)
        try:
            yield tables
        except BaseException:
            tables.abort()
            raise


@dataclass
class SlideMineralogy:
    """Accumulates one slide's block measurements (``add``, any order) and finishes its document (``finish``).

    The inner objects' rows go to ``tables`` as blocks arrive, the objects crossing blocks as their band is
    joined (``merge``): what is held is one row of blocks and the open objects along it, plus the histograms
    of distinct object areas, never the slide's area (bench/mineralogy_memory.py).
    """

    spec: MeasureSpec
    height: int
    width: int
    tables: ObjectTables | None = None

    def __post_init__(self) -> None:
        spec, settings = self.spec, self.spec.settings
        write = self.tables is not None
        self._grains = GrainMerger(self.height, self.width, len(spec.names), settings.connectivity,
                                   settings.min_grain_px, on_rows=self.tables.add_grains if write else None)
        self._particles = ParticleMerger(self.height, self.width, spec.sample, settings.connectivity, spec.edges,
                                         settings.min_grain_px, spec.fractions,
                                         on_rows=self.tables.add_particles if write else None)

    def add(self, block: BlockMineralogy) -> None:
        """Raises ValueError when the block overlaps blocks added before."""
        if self.tables is not None:
            self.tables.add_grains(block.grains.rows_class, block.grains.rows_shapes)
            self.tables.add_particles(block.particles.rows_composition, block.particles.rows_shapes)
        block.grains.drop_rows()
        block.particles.drop_rows()
        self._grains.add(block.grains)
        self._particles.add(block.particles)

    def finish(self) -> dict:
        """Join what is still open, close the tables; the ``mineralogy.json`` document.

        Raises:
            ValueError: the blocks added do not tile the slide exactly.
        """
        spec, settings = self.spec, self.spec.settings
        names, minimum, size = list(spec.names), settings.min_grain_px, spec.pixel_size_um
        grains, particles = self._grains.finish(), self._particles.finish()
        rows = self.tables.close() if self.tables is not None else {}

        num = len(names)
        real = particles.area >= minimum
        bins = size_bins(particles.area[real], size)
        particle_bins = np.bincount(bins, weights=particles.count[real], minlength=len(CURVE_EDGES) - 1)
        particle_bin_pixels = np.zeros((len(CURVE_EDGES) - 1, num), np.int64)
        np.add.at(particle_bin_pixels, bins, particles.composition[real])
        grain_bins = np.zeros((num, len(CURVE_EDGES) - 1), np.int64)
        grain_bin_area = np.zeros_like(grain_bins)
        kept = grains.area >= minimum
        cells = (grains.klass[kept].astype(np.int64), size_bins(grains.area[kept], size))
        np.add.at(grain_bins, cells, grains.count[kept])
        np.add.at(grain_bin_area, cells, grains.area[kept] * grains.count[kept])
        fractions = spec.fractions
        tally = Tally(
            class_pixels=grains.class_pixels, boundary=grains.boundary,
            liberation=particles.liberation,
            fraction_particles=np.bincount(fractions.of(particles.area[real]), weights=particles.count[real],
                                           minlength=fractions.count).astype(np.int64),
            particles=int(particles.count[real].sum()), noise_particles=int(particles.count[~real].sum()),
            touching_edge=particles.touching_edge,
            grains=np.bincount(grains.klass[kept], weights=grains.count[kept], minlength=num).astype(np.int64),
            noise_grains=np.bincount(grains.klass[~kept], weights=grains.count[~kept], minlength=num).astype(np.int64),
            particle_bins=particle_bins.astype(np.int64), particle_bin_pixels=particle_bin_pixels,
            grain_bins=grain_bins, grain_bin_area=grain_bin_area,
        )
        density = _density_vector(spec, tally.class_pixels)
        areas = grains.areas(num)
        exact = {
            "particles": size_distribution(particles.area[real], particles.count[real], size,
                                           None if density is None else particles.composition[real] @ density),
            "grains": {name: {**grain_statistics(*areas[i], minimum, size),
                              "size": _grain_sizes(*areas[i], minimum, size)} for i, name in enumerate(names)},
        }
        document = mineralogy_document(tally, spec, exact)
        document["tables"] = {"rows": rows, "leaves_out": f"objects under mineralogy.min_grain_px ({minimum} px)"} \
            if rows else None
        return check_finite(document)


def check_finite(document, where: str = "") -> dict:
    """``document`` unchanged when every number in it is finite (JSON has no NaN or infinity: ``json.dumps``
    would write ``NaN`` / ``Infinity``, which no JSON reader accepts).

    Raises:
        ValueError: naming the first key holding NaN or an infinity.
    """
    if isinstance(document, dict):
        for key, value in document.items():
            check_finite(value, f"{where}.{key}" if where else str(key))
    elif isinstance(document, (list, tuple)):
        for index, value in enumerate(document):
            check_finite(value, f"{where}[{index}]")
    elif isinstance(document, (float, np.floating)) and not math.isfinite(document):
        raise ValueError(f"mineralogy: {where or 'a value'} is {float(document)!r}, not a finite number (a bug: "
                         "nothing is written)")
    return document


def _grain_sizes(area: np.ndarray, count: np.ndarray, minimum: int, size: float | None) -> dict:
    """ECD quantiles of one class's grains, noise left out; mass-weighted = area-weighted (one density)."""
    keep = area >= minimum
    return size_distribution(area[keep], count[keep], size, area[keep] * count[keep])


def _density_vector(spec: MeasureSpec, class_pixels: np.ndarray) -> np.ndarray | None:
    """(C,) g/cm³ of the sample classes (0 for background and for classes absent: they weigh nothing); None
    when a sample class present has no density (``densities_missing``)."""
    densities = spec.densities
    vector = np.zeros(len(spec.names))
    for i, name in enumerate(spec.names):
        if spec.sample[i] and class_pixels[i]:
            if name not in densities:
                return None
            vector[i] = densities[name]
    return vector


def binned_sizes(counts: np.ndarray, weights: dict[str, np.ndarray | None], unit: str) -> dict:
    """D10 / D50 / P80 read off binned curves (a batch): each weighting's per-bin weights, or None."""
    result = {"count": int(np.sum(counts)), "unit": unit, "binned": True}
    for name, bins in weights.items():
        result[name] = {key: None if bins is None else _rounded(binned_passing_size(bins, p)) for key, p in QUANTILES}
    return result


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main_minerals(document: dict) -> list[str]:
    """The minerals present (sample classes with pixels), most abundant first."""
    background = set(document["background_classes"])
    modal = document["modal_mineralogy"]
    present = [n for n in document["classes"] if n not in background and modal[n]["pixels"]]
    return sorted(present, key=lambda n: -modal[n]["pixels"])


def mineralogy_document(tally: Tally, spec: MeasureSpec, exact: dict | None = None) -> dict:
    """The ``mineralogy.json`` document from a tally: modal mineralogy, association, particles, liberation
    (overall and by size fraction), grains. ``exact`` (one slide) gives size quantiles read off the exact
    distributions; without it (a batch) they are read off the binned curves (``binned: true``)."""
    names, sample, settings = list(spec.names), spec.sample, spec.settings
    unit = spec.unit
    background = set(spec.background)
    modal, missing = modal_mineralogy(tally.class_pixels, names, background, spec.densities)
    density = _density_vector(spec, tally.class_pixels)
    particle_area = tally.particle_bin_pixels.sum(axis=1)
    particle_mass = None if density is None else tally.particle_bin_pixels @ density
    fraction_labels = fraction_names(tuple(settings.size_fractions), "µm" if unit == "um" else "px")
    document = {
        "classes": names, "unit": unit, "pixel_size_um": spec.pixel_size_um,
        "settings": settings.model_dump(mode="json"),
        "connectivity": settings.connectivity, "min_grain_px": settings.min_grain_px,
        "background_classes": [n for n in names if n in background],
        "modal_mineralogy": modal, "densities_missing": missing,
        "densities": {n: spec.densities[n] for n, s in zip(names, sample) if s and n in spec.densities},
        "association": association_table(tally.boundary, names, background, spec.pixel_size_um),
        "particles": None, "liberation": None, "liberation_by_size": None,
        "grains": {},
    }
    if spec.has_particles:
        document["particles"] = {
            "count": tally.particles, "noise": tally.noise_particles, "touching_edge": tally.touching_edge,
            "sample_pixels": int(tally.liberation.sum()),
            "size": exact["particles"] if exact else binned_sizes(
                tally.particle_bins, {"number": tally.particle_bins, "area": particle_area, "mass": particle_mass},
                unit),
        }
        document["liberation"] = liberation_table(tally.liberation.sum(axis=0), names, sample, spec.edges)
        document["liberation_by_size"] = {
            label: {"particles": int(tally.fraction_particles[f]),
                    "liberation": liberation_table(tally.liberation[f], names, sample, spec.edges)}
            for f, label in enumerate(fraction_labels)}
    for i, name in enumerate(names):
        if exact:
            document["grains"][name] = exact["grains"][name]
        else:
            document["grains"][name] = {
                "count": int(tally.grains[i]), "noise_components": int(tally.noise_grains[i]),
                "size": binned_sizes(tally.grain_bins[i], {"number": tally.grain_bins[i], "area":
                                     tally.grain_bin_area[i], "mass": tally.grain_bin_area[i]}, unit)}
    document["liberation_classes"] = liberation_classes(spec.edges)
    document["size_fractions"] = fraction_labels
    document["tally"] = tally.to_json()
    return document
