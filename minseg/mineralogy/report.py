"""A batch's mineralogy: the slides' tallies summed into one document, its figures, and a Markdown report
with the batch tables and a headline row per slide (``segment`` and ``measure`` write it under
``<output>/mineralogy/``).

Slides are summed only with slides measured the same way (same classes, settings and pixel size); any other
is named in the report, not mixed in. Batch size quantiles are read off the binned curves (10 bins per
decade), the slides' own from their exact distributions.
"""

from __future__ import annotations

import json

from minseg.io.storage import Storage, join_uri
from minseg.mineralogy.config import MineralogySettings
from minseg.mineralogy.modal import SULPHIDES
from minseg.mineralogy.plots import write_plots
from minseg.mineralogy.slide import DOCUMENT, MeasureSpec, Tally, check_finite, main_minerals, mineralogy_document

REPORT = "mineralogy.md"
FOLDER = "mineralogy"


def headline(document: dict) -> dict:
    """One slide's headline numbers as flat columns (``slides.csv`` / ``.parquet`` rows, the batch report's slide
    table), each on its own basis:

    - ``area_pct:<class>``: % of the whole image, background classes included (``area_percent``), every class;
    - ``sample_area_pct:<class>``: % of the sample, background left out (``sample_area_percent``, the Delesse
      modal figure), sample classes only;
    - ``wt_pct:<class>``: weight % of the sample, sample classes with a weight % (none when a mineral present
      has no density);
    - ``grains:<class>`` and ``mean_grain_px:<class>``, ``particles`` and ``particle_p80_um`` (``_px`` without a
      pixel size; mass-weighted), ``liberated_pct:<mineral>`` (None when the mineral is in no particle).
    """
    row = {}
    for name, entry in document["modal_mineralogy"].items():
        row[f"area_pct:{name}"] = entry["area_percent"]
        if entry.get("sample_area_percent") is not None:
            row[f"sample_area_pct:{name}"] = entry["sample_area_percent"]
        if entry.get("weight_percent") is not None:
            row[f"wt_pct:{name}"] = entry["weight_percent"]
    for name, entry in document["grains"].items():
        row[f"grains:{name}"] = entry["count"]
        if entry.get("mean_area_px") is not None:
            row[f"mean_grain_px:{name}"] = entry["mean_area_px"]
    particles = document.get("particles")  # absent from summaries written before #17, None without background
    if particles:
        size = particles["size"]
        row["particles"] = particles["count"]
        row[f"particle_p80_{size['unit']}"] = (size.get("mass") or {}).get("p80")
    for name, entry in (document.get("liberation") or {}).items():
        row[f"liberated_pct:{name}"] = entry["liberated_pct"]
    return row


def headline_text(document: dict, top: int = 4) -> list[str]:
    """A few console lines: modal mineralogy, P80 per main mineral, liberation of the main sulphide, and the
    errors against a reference mask when the document has them."""
    unit = "µm" if document["unit"] == "um" else "px"
    minerals = main_minerals(document)
    if not minerals:
        return ["mineralogy: no mineral found (only background classes)"]
    modal = document["modal_mineralogy"]
    shown = minerals[:top]
    lines = ["modal mineralogy (wt % / area % of the sample): " + ", ".join(
        f"{n} {_f(modal[n]['weight_percent'], 1)} / {_f(modal[n]['sample_area_percent'], 1)}" for n in shown)]
    sizes = [f"{n} grains {_f(document['grains'][n]['size']['mass']['p80'], 1)}" for n in shown]
    if document.get("particles"):
        sizes.insert(0, f"particles {_f(document['particles']['size']['mass']['p80'], 1)}")
    lines.append(f"P80 by mass ({unit}): " + ", ".join(sizes))
    if document.get("densities_missing"):  # why every weight % above is '–'
        lines.append(f"no weight % (nor particle sizes by mass): no density for "
                     f"{', '.join(document['densities_missing'])}; set mineralogy.densities (g/cm³)")
    by_weight = sorted(minerals, key=lambda n: -(modal[n]["weight_percent"] or modal[n]["sample_area_percent"]))
    sulphides = [n for n in by_weight if n.casefold() in SULPHIDES]
    main = (sulphides or by_weight)[0]  # the most abundant by weight, as a mill sees it
    if document.get("liberation"):
        lines.append(f"liberation of {main}: {_f(document['liberation'][main]['liberated_pct'], 1)} % of its area "
                     "in particles of it alone")
    errors = (document.get("reference") or {}).get("errors")
    if errors:
        worst = max(errors["modal"]["minerals"].items(), key=lambda kv: abs(kv[1]["sample_area_pct"]["error"] or 0))
        text = (f"against the reference mask: modal area % off by {_f(errors['modal']['mae_pp'])} pp on average "
                f"(most: {worst[0]} {worst[1]['sample_area_pct']['error']:+.2f} pp)")
        liberation = (errors.get("liberation") or {}).get("minerals", {}).get(main)
        if liberation and liberation["reference"] is not None:
            text += f"; {main} liberated {_f(liberation['predicted'], 1)} % vs {_f(liberation['reference'], 1)} %"
        text += (f"; association: {_f(errors['association']['mean_misassigned_pp'])} % of a mineral's boundary "
                 "with the wrong partner on average")
        particles = errors["sizes"].get("particles")
        if particles and particles["p80"]["error_pct"] is not None:
            text += f"; particle P80 {particles['p80']['error_pct']:+.1f} %"
        lines.append(text)
    return lines


def _signature(document: dict) -> str:
    """Slides sum only with slides measured the same way: classes, settings (what the numbers depend on) and
    pixel size (a tally counts pixels: slides of other pixel sizes would weigh by pixel count, not area)."""
    settings = {k: v for k, v in document["settings"].items() if k not in ("tables", "plots")}
    return json.dumps([document["classes"], settings, document["unit"], document["pixel_size_um"]])


def batch_document(documents: dict[str, dict]) -> tuple[dict | None, list[str], list[str]]:
    """(the batch document, the slides summed, the slides left out as measured differently) from the slides'
    ``mineralogy.json`` documents by slide id; the most common way of measuring wins."""
    if not documents:
        return None, [], []
    groups: dict[str, list[str]] = {}
    for slide, document in documents.items():
        groups.setdefault(_signature(document), []).append(slide)
    summed = max(groups.values(), key=len)
    first = documents[summed[0]]
    tally = sum((Tally.from_json(documents[s]["tally"]) for s in summed[1:]), Tally.from_json(first["tally"]))
    spec = MeasureSpec(tuple(first["classes"]), MineralogySettings(**first["settings"]), first["pixel_size_um"])
    document = mineralogy_document(tally, spec)
    document["colours"] = first.get("colours")
    document["slides"] = sorted(summed)
    left_out = sorted(s for s in documents if s not in summed)
    document["left_out"] = left_out
    return document, sorted(summed), left_out


def _f(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(document: dict, rows: dict[str, dict], title: str, plots: list[str]) -> str:
    """The batch report: totals, liberation by size, association, a row per slide, the figures."""
    unit = "µm" if document["unit"] == "um" else "px"
    minerals = main_minerals(document)
    lines = [f"# Mineralogy: {title}", "",
             f"{len(document['slides'])} slides summed ({', '.join(document['slides'])}); sizes in {unit}, "
             "batch size quantiles read off binned curves (10 bins per decade). Definitions: docs/mineralogy.md.", ""]
    if document["left_out"]:
        lines += [f"Not summed (measured with other classes, settings or pixel size): "
                  f"{', '.join(document['left_out'])}.", ""]
    lines += ["## Modal mineralogy, grains and liberation", "",
              f"| mineral | area % of sample | wt % | grains | grain P80 ({unit}, mass) | liberated % |",
              "|---|---:|---:|---:|---:|---:|"]
    for name in minerals:
        modal, grains = document["modal_mineralogy"][name], document["grains"][name]
        liberated = (document["liberation"] or {}).get(name, {}).get("liberated_pct")
        lines.append(f"| {name} | {_f(modal['sample_area_percent'])} | {_f(modal['weight_percent'])} | "
                     f"{grains['count']} | {_f(grains['size']['mass']['p80'], 1)} | {_f(liberated, 1)} |")
    particles = document["particles"]
    if particles:
        size = particles["size"]
        lines += ["", f"Particles: {particles['count']} ({particles['noise']} noise left out, "
                  f"{particles['touching_edge']} cut by a slide edge); P80 by mass {_f(size['mass']['p80'], 1)} "
                  f"{unit}, by area {_f(size['area']['p80'], 1)} {unit}, D50 by number "
                  f"{_f(size['number']['d50'], 1)} {unit}.", ""]
        fractions = list(document["liberation_by_size"])
        lines += ["## Liberated % by size fraction", "",
                  "| mineral | " + " | ".join(fractions) + " |", "|---|" + "---:|" * len(fractions)]
        for name in minerals:
            cells = [_f(document["liberation_by_size"][f]["liberation"][name]["liberated_pct"], 1)
                     if document["liberation_by_size"][f]["liberation"][name]["pixels"] else "–" for f in fractions]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("| (particles) | " + " | ".join(str(document["liberation_by_size"][f]["particles"])
                                                 for f in fractions) + " |")
    lines += ["", "## Association (% of the row mineral's boundary)", "",
              "| mineral | " + " | ".join(minerals) + " | free surface |", "|---|" + "---:|" * (len(minerals) + 1)]
    for name in minerals:
        row = document["association"][name]
        lines.append(f"| {name} | " + " | ".join("–" if other == name else _f(row["shared_pct"][other], 1)
                                                 for other in minerals) + f" | {_f(row['free_surface_pct'], 1)} |")
    # the sample's basis, as the batch tables above (the whole image's % moves with how much resin is mounted)
    columns = [f"sample_area_pct:{n}" for n in minerals] + [c for c in (f"particle_p80_{document['unit']}",) if
                                                            any(c in r for r in rows.values())] + \
        [f"liberated_pct:{n}" for n in minerals if any(f"liberated_pct:{n}" in r for r in rows.values())]
    lines += ["", "## Slides (area % of the sample, background left out; particle P80 by mass)", "",
              "| slide | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for slide in sorted(rows):
        lines.append(f"| {slide} | " + " | ".join(_f(rows[slide].get(c), 2) for c in columns) + " |")
    lines += [""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def write_batch_report(documents: dict[str, dict], storage: Storage, out_uri: str, title: str) -> dict | None:
    """Sum the slides' documents and write ``mineralogy.json``, the figures and ``mineralogy.md`` under
    ``out_uri``; returns the batch document (None without slides)."""
    document, _, _ = batch_document(documents)
    if document is None:
        return None
    check_finite(document)
    plots = write_plots(document, storage, out_uri, title)
    storage.write_json(join_uri(out_uri, DOCUMENT), document, indent=1)
    rows = {slide: headline(doc) for slide, doc in documents.items()}
    storage.write_text(join_uri(out_uri, REPORT), markdown(document, rows, title, plots))
    return document
