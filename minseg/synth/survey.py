"""A synthetic regional geochemical survey for the prospectivity pipeline.

Writes, under one folder or prefix:

- ``samples.csv``: sample_id, x, y and the 16 elements of the MFAF paper; values under
  a detection limit are written as ``<DL`` text, missing values are empty;
- ``samples.parquet``: the same samples with numeric columns and GTK-style flag columns
  ``<element>_T`` holding '<' where the value is censored (value = the detection limit);
- ``lithology.tif``: a categorical GeoTIFF of rock units (Voronoi-like map);
- ``faults.geojson``: fault polylines; ``deposits.geojson`` / ``deposits.csv``: deposit
  points with commodity and type;
- ``survey.json``: CRS, extent, units, detection limits and which elements carry the
  deposits' halos (the ground truth a screening step should find).

Deposits sit near faults in favourable units; their halos raise a subset of elements
with distance decay, on top of lognormal backgrounds that vary by rock unit.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from minseg.synth.config import SurveySynth
from minseg.io.crs import epsg_code
from minseg.io.geotiff import GridGeometry, write_geotiff
from minseg.io.storage import Storage, join_uri, json_text
from minseg.logs import get_logger, log_event

log = get_logger("synth.survey")

# Element: (unit, background median, log-sd). Au and Ag in ng/g, the rest in ug/g.
ELEMENTS: dict[str, tuple[str, float, float]] = {
    "Ag": ("ng/g", 60.0, 0.6),
    "Au": ("ng/g", 1.5, 0.9),
    "B": ("ug/g", 12.0, 0.5),
    "Sn": ("ug/g", 2.5, 0.5),
    "Cu": ("ug/g", 25.0, 0.6),
    "Ba": ("ug/g", 350.0, 0.4),
    "Mn": ("ug/g", 550.0, 0.4),
    "Pb": ("ug/g", 18.0, 0.5),
    "Zn": ("ug/g", 65.0, 0.5),
    "As": ("ug/g", 6.0, 0.8),
    "Sb": ("ug/g", 0.4, 0.8),
    "Hg": ("ug/g", 0.04, 0.7),
    "Mo": ("ug/g", 0.9, 0.6),
    "W": ("ug/g", 1.2, 0.6),
    "Bi": ("ug/g", 0.25, 0.7),
    "F": ("ug/g", 420.0, 0.4),
}

# Deposit types and the elements their halos raise (peak multiplier at the deposit).
DEPOSIT_TYPES: dict[str, dict[str, float]] = {
    "orogenic-Au": {"Au": 25.0, "As": 12.0, "Sb": 8.0, "Bi": 6.0, "W": 4.0, "Ag": 4.0, "Hg": 3.0, "Cu": 2.5},
    "Pb-Zn": {"Pb": 12.0, "Zn": 10.0, "Ag": 6.0, "Ba": 3.0},
}
# Elements whose censoring is heavy in real till surveys (low abundance, high limits).
_HEAVILY_CENSORED = {"Au", "Hg", "Bi", "Sb", "Ag", "Mo", "W"}


def _nice(value: float) -> float:
    """Round a detection limit to one significant digit, as labs report them."""
    exponent = math.floor(math.log10(value))
    return round(value / 10**exponent) * 10**exponent


def _smooth_field(rng, xs, ys, extent, bumps=8):
    """A smooth regional trend: a sum of broad gaussian bumps, mean ~0, sd ~0.3."""
    (xmin, ymin, xmax, ymax), field = extent, np.zeros_like(xs)
    scale = max(xmax - xmin, ymax - ymin)
    for _ in range(bumps):
        cx, cy = rng.uniform(xmin, xmax), rng.uniform(ymin, ymax)
        width = rng.uniform(0.1, 0.3) * scale
        field += rng.normal(0, 0.35) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * width**2))
    return field


def _segment_distance(px, py, polylines):
    """Distance from each point to the nearest polyline segment (vectorised per segment)."""
    best = np.full(px.shape, np.inf)
    for line in polylines:
        for (ax, ay), (bx, by) in zip(line[:-1], line[1:]):
            vx, vy = bx - ax, by - ay
            t = np.clip(((px - ax) * vx + (py - ay) * vy) / (vx * vx + vy * vy), 0, 1)
            best = np.minimum(best, np.hypot(px - (ax + t * vx), py - (ay + t * vy)))
    return best


def generate_survey(settings: SurveySynth, seed: int = 0) -> dict:
    """Build the survey in memory: tables, rasters and vectors (see module doc)."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 42])
    xmin, ymin = settings.origin_x, settings.origin_y
    xmax, ymax = xmin + settings.width_m, ymin + settings.height_m
    extent = (xmin, ymin, xmax, ymax)
    cols = max(1, int(round(settings.width_m / settings.cell_m)))
    rows = max(1, int(round(settings.height_m / settings.cell_m)))
    geometry = GridGeometry(xmin, ymax, settings.cell_m, settings.cell_m, rows, cols, epsg_code(settings.crs))

    # Lithology: nearest of a few seeds per unit, on a slightly warped plane.
    n_units = settings.n_rock_units
    seeds_xy = rng.uniform((xmin, ymin), (xmax, ymax), size=(3 * n_units, 2))
    seed_unit = np.concatenate([np.arange(1, n_units + 1), rng.integers(1, n_units + 1, 2 * n_units)])
    unit_names = [f"unit-{u}" for u in range(1, n_units + 1)]
    favourable = {1, 2} & set(range(1, n_units + 1))  # host units of the deposits (unit 1 alone when only one)

    def unit_at(x, y):
        warp = 0.06 * settings.width_m * np.sin(y / settings.height_m * 7.0 + 1.3)
        d = (x[..., None] + warp[..., None] - seeds_xy[:, 0]) ** 2 + (y[..., None] - seeds_xy[:, 1]) ** 2
        return seed_unit[np.argmin(d, axis=-1)].astype(np.uint8)

    grid_x, grid_y = geometry.pixel_centres()
    lithology = unit_at(*np.meshgrid(grid_x, grid_y))

    # Faults: kinked polylines crossing the area.
    faults = []
    for _ in range(settings.n_faults):
        x, y = rng.uniform(xmin, xmax), rng.uniform(ymin, ymax)
        heading = rng.uniform(0, math.pi)
        line = [(x, y)]
        for _ in range(rng.integers(3, 8)):
            heading += rng.normal(0, 0.25)
            step = rng.uniform(0.02, 0.08) * settings.width_m
            x, y = x + math.cos(heading) * step, y + math.sin(heading) * step
            line.append((x, y))
        faults.append(line)

    # Deposits: close to a fault, preferably in a favourable unit; 3/4 orogenic Au.
    deposits = []
    attempts = 0
    while len(deposits) < settings.n_deposits and attempts < 10000:
        attempts += 1
        line = faults[rng.integers(len(faults))]
        k = rng.integers(len(line) - 1)
        t = rng.random()
        x = line[k][0] + t * (line[k + 1][0] - line[k][0]) + rng.normal(0, 400)
        y = line[k][1] + t * (line[k + 1][1] - line[k][1]) + rng.normal(0, 400)
        if not (xmin < x < xmax and ymin < y < ymax):
            continue
        unit = int(unit_at(np.array([x]), np.array([y]))[0])
        if unit not in favourable and rng.random() > 0.15:
            continue
        kind = "orogenic-Au" if len(deposits) % 4 != 3 else "Pb-Zn"
        deposits.append(
            {
                "deposit_id": f"D{len(deposits) + 1:03d}",
                "x": x,
                "y": y,
                "type": kind,
                "commodity": "Au" if kind == "orogenic-Au" else "Zn,Pb",
                "unit": unit_names[unit - 1],
            }
        )

    # Samples: irregular, like a till survey (uniform plus a few denser campaigns).
    n = settings.n_samples
    dense = n // 4
    centres = rng.uniform((xmin, ymin), (xmax, ymax), size=(4, 2))
    clustered = centres[rng.integers(0, 4, dense)] + rng.normal(0, 0.06 * settings.width_m, (dense, 2))
    points = np.concatenate([rng.uniform((xmin, ymin), (xmax, ymax), size=(n - dense, 2)), clustered])
    points[:, 0] = np.clip(points[:, 0], xmin, xmax - 1e-6)
    points[:, 1] = np.clip(points[:, 1], ymin, ymax - 1e-6)
    sx, sy = points[:, 0], points[:, 1]
    sample_unit = unit_at(sx, sy)
    fault_distance = _segment_distance(sx, sy, faults)
    unit_effect = rng.normal(0, 0.25, size=(n_units + 1, len(ELEMENTS)))

    values: dict[str, np.ndarray] = {}
    detection_limits: dict[str, float] = {}
    for index, (element, (_, median, sd)) in enumerate(ELEMENTS.items()):
        log_value = np.log(median) + unit_effect[sample_unit, index] + _smooth_field(rng, sx, sy, extent)
        log_value += rng.normal(0, sd, n)
        multiplier = np.ones(n)
        for deposit in deposits:
            peak = DEPOSIT_TYPES[deposit["type"]].get(element)
            if peak:
                halo = rng.uniform(1500, 3000)
                distance = np.hypot(sx - deposit["x"], sy - deposit["y"])
                multiplier += (peak - 1) * np.exp(-distance / halo)
        if element in ("Au", "As", "Sb"):
            multiplier *= 1 + 0.6 * np.exp(-fault_distance / 600.0)  # fluids along faults
        value = np.exp(log_value) * multiplier
        share = settings.censored_share * (1.0 if element in _HEAVILY_CENSORED else 0.15)
        limit = _nice(float(np.quantile(value, share))) if share > 0 else 0.0
        detection_limits[element] = limit
        values[element] = np.round(value, 3 - max(0, int(math.floor(math.log10(max(median, 1e-9))))))
    missing = {e: rng.random(n) < settings.missing_share for e in ELEMENTS}

    halo_elements = sorted({e for kind in DEPOSIT_TYPES.values() for e in kind})
    return {
        "geometry": geometry,
        "lithology": lithology,
        "unit_names": unit_names,
        "faults": faults,
        "deposits": deposits,
        "sample_xy": points,
        "values": values,
        "missing": missing,
        "detection_limits": detection_limits,
        "metadata": {
            "crs": settings.crs,
            "epsg": geometry.epsg,
            "extent": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax},
            "cell_m": settings.cell_m,
            "n_samples": n,
            "elements": {e: {"unit": ELEMENTS[e][0], "detection_limit": detection_limits[e]} for e in ELEMENTS},
            "deposit_types": {k: sorted(v) for k, v in DEPOSIT_TYPES.items()},
            "halo_elements": halo_elements,
            "rock_units": {str(i + 1): name for i, name in enumerate(unit_names)},
            "favourable_units": sorted(unit_names[u - 1] for u in favourable),
            "seed": seed,
        },
    }


def _sample_tables(survey: dict) -> tuple[pa.Table, pa.Table]:
    n = len(survey["sample_xy"])
    ids = pa.array([f"S{i + 1:06d}" for i in range(n)])
    xs = pa.array(np.round(survey["sample_xy"][:, 0], 1))
    ys = pa.array(np.round(survey["sample_xy"][:, 1], 1))
    text_columns = {"sample_id": ids, "x": xs, "y": ys}
    numeric_columns = {"sample_id": ids, "x": xs, "y": ys}
    for element, value in survey["values"].items():
        limit = survey["detection_limits"][element]
        censored = value < limit
        missing = survey["missing"][element]
        text = np.where(censored, f"<{limit:g}", np.char.mod("%g", value)).astype(object)
        text[missing] = None
        text_columns[element] = pa.array(text.tolist(), type=pa.string())
        numeric = np.where(censored, limit, value)
        numeric_columns[element] = pa.array(np.where(missing, np.nan, numeric), from_pandas=True)
        flags = np.where(censored & ~missing, "<", "").astype(object)
        flags[missing] = None
        numeric_columns[f"{element}_T"] = pa.array(flags.tolist(), type=pa.string())
    return pa.table(text_columns), pa.table(numeric_columns)


def _geojson(features: list[dict], epsg: int) -> str:
    return json_text(
        {
            "type": "FeatureCollection",
            "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}},
            "features": features,
        },
        indent=None,
    )


def write_survey(output_uri: str, settings: SurveySynth, seed: int = 0, storage: Storage | None = None) -> dict:
    """Generate the survey and write every file under ``output_uri``; returns a summary."""
    storage = storage or Storage()
    survey = generate_survey(settings, seed)
    geometry: GridGeometry = survey["geometry"]
    epsg = geometry.epsg

    text_table, numeric_table = _sample_tables(survey)
    buffer = io.BytesIO()
    pacsv.write_csv(text_table, buffer)
    storage.write_bytes(join_uri(output_uri, "samples.csv"), buffer.getvalue())
    buffer = io.BytesIO()
    pq.write_table(numeric_table, buffer)
    storage.write_bytes(join_uri(output_uri, "samples.parquet"), buffer.getvalue())

    write_geotiff(
        join_uri(output_uri, "lithology.tif"),
        survey["lithology"],
        geometry,
        nodata=0,
        description=json.dumps({"rock_units": survey["metadata"]["rock_units"]}),
        storage=storage,
    )
    fault_features = [
        {
            "type": "Feature",
            "properties": {"fault_id": f"F{i + 1:03d}"},
            "geometry": {"type": "LineString", "coordinates": [[round(x, 1), round(y, 1)] for x, y in line]},
        }
        for i, line in enumerate(survey["faults"])
    ]
    storage.write_text(join_uri(output_uri, "faults.geojson"), _geojson(fault_features, epsg))
    deposit_features = [
        {
            "type": "Feature",
            "properties": {k: v for k, v in d.items() if k not in ("x", "y")},
            "geometry": {"type": "Point", "coordinates": [round(d["x"], 1), round(d["y"], 1)]},
        }
        for d in survey["deposits"]
    ]
    storage.write_text(join_uri(output_uri, "deposits.geojson"), _geojson(deposit_features, epsg))
    rows = ["deposit_id,x,y,type,commodity,unit"] + [
        f"{d['deposit_id']},{d['x']:.1f},{d['y']:.1f},{d['type']},\"{d['commodity']}\",{d['unit']}"
        for d in survey["deposits"]
    ]
    storage.write_text(join_uri(output_uri, "deposits.csv"), "\n".join(rows) + "\n")
    storage.write_json(join_uri(output_uri, "survey.json"), survey["metadata"])
    summary = {
        "output": output_uri,
        "samples": settings.n_samples,
        "deposits": len(survey["deposits"]),
        "faults": len(survey["faults"]),
        "grid": f"{geometry.rows}x{geometry.cols}",
        "crs": settings.crs,
    }
    log_event(log, "synth.survey.done", **summary)
    return summary
