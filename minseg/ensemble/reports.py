"""Evaluation reports (CSV + Markdown + JSON) and figures (PNG), analogues of the
Res-UNet paper's Tables 4-7, written beside the manifest and printed."""

from __future__ import annotations

import fnmatch
import io
import json
import math

import numpy as np

from minseg.enums import ChannelMode
from minseg.io.images import display_rgb
from minseg.io.storage import (COMMAND_MARKERS, ObjectNotFoundError, Storage, absolute_uri, file_stem, join_uri,
                               staging_folder)
from minseg.io.tables import csv_text
from minseg.metrics import metric_value

BASELINE_MODELS = ("vgg16_unet",)
COMPARISON_MODELS = ("deeplabv3", "pspnet")


def _fmt(value) -> str:
    if value is None:  # undefined, as read back from JSON
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _table(rows: list[dict]) -> tuple[str, str]:
    """(CSV text, Markdown text) of a list of dicts with the same keys."""
    if not rows:
        return "", ""
    columns = list(rows[0])
    markdown = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    markdown += ["| " + " | ".join(_fmt(row[c]) for c in columns) + " |" for row in rows]
    return csv_text(rows, columns), "\n".join(markdown) + "\n"


def _key_class(key: str) -> str | None:
    return key.partition(":")[2] or None


def ranked_members(document: dict) -> list[dict]:
    """The member candidates in rank order (validation): the first is the one the ensembles were built from
    first, never chosen on test."""
    key = document["rank_key"]
    members = [c for c in document["candidates"] if c["key"].startswith("member:")]
    rank = {name: index for index, name in enumerate(document.get("ranking") or [])}
    members.sort(key=lambda c: (rank.get(c["members"][0], len(rank)), -_value(c["metrics"], key), c["key"]))
    return members


def baseline_members(document: dict, baselines: list[str] | None) -> list[str]:
    """Member names that are baselines: ``evaluation.baselines``, else members of a baseline model."""
    return baselines or [n for n, m in document["members"].items() if m["model"] in BASELINE_MODELS]


def best_member_of(document: dict, baselines: list[str] | None) -> dict:
    """The best member: the first in rank order that is no baseline (every table and figure says this one)."""
    members = ranked_members(document)
    names = baseline_members(document, baselines)
    return next((c for c in members if c["members"][0] not in names), members[0])


def build_tables(document: dict, train_stats: dict, baselines: list[str] | None,
                 stats_label: str = "train") -> dict[str, list[dict]]:
    """The report's tables from an evaluation (or score) document; ``train_stats``: the class statistics shown
    beside the per-class IoU, headed ``stats_label`` (the training split's, or the scored set's)."""
    key = document["rank_key"]
    cls = _key_class(key)
    names = [c["name"] for c in document["classes"]["classes"]]
    candidates = {c["key"]: c for c in document["candidates"]}
    members = ranked_members(document)

    def class_columns(metrics):
        if cls is None:
            return {}
        return {f"{cls} IoU": metric_value(metrics, f"iou:{cls}"), f"{cls} F1": metric_value(metrics, f"f1:{cls}"),
                f"{cls} precision": metric_value(metrics, f"precision:{cls}"),
                f"{cls} recall": metric_value(metrics, f"recall:{cls}")}

    def chosen_on(candidate):  # the value the selection compared (validation), beside the test split's
        if not candidate.get("selection_metrics"):
            return {}
        return {f"{key} ({document.get('selection_split', 'val')}, selects)": _value(candidate["selection_metrics"], key)}

    table4 = [{"member": c["key"].split(":", 1)[1], "model": document["members"][c["members"][0]]["model"],
               **({} if key == "miou" else {key: _value(c["metrics"], key)}), "mIoU": c["metrics"]["miou"], "mPA": c["metrics"]["mPA"],
               "mRecall": c["metrics"]["mRecall"], "F1 (paper)": c["metrics"]["F1_paper"],
               "mean F1": c["metrics"]["mean_f1"], **class_columns(c["metrics"]), **chosen_on(c), "TPI (s)": c["tpi"]}
              for c in members]
    table5 = [{"ensemble": c["key"], "k": len(c["members"]), "mode": c["mode"],
               **({f"{cls} F1": metric_value(c["metrics"], f"f1:{cls}"), f"{cls} IoU": metric_value(c["metrics"], f"iou:{cls}")}
                  if cls else ({} if key == "miou" else {key: _value(c["metrics"], key)})),
               "mIoU": c["metrics"]["miou"], **chosen_on(c), "TPI (s)": c["tpi"],
               "selected": c["key"] == document["selected"]}
              for c in document["candidates"] if not c["key"].startswith("member:")]
    baseline_names = baseline_members(document, baselines)
    baseline = next((c for c in members if c["members"][0] in baseline_names), None)
    best_member = best_member_of(document, baselines)
    selected = candidates.get(document["selected"])  # None: none selected (no candidate fits the TPI budget)
    columns = [("best baseline", baseline), ("best member", best_member)]
    if selected and selected["key"] != best_member["key"]:  # a single selected member is the best member: one column
        columns.append(("selected", selected))
    table6 = []
    for index, name in enumerate(names):
        row = {"class": name}
        for label, candidate in columns:
            if candidate is not None:
                row[f"{label} ({candidate['key'].split(':')[-1]}) IoU"] = candidate["metrics"]["iou"][index]
        row[f"{stats_label} particles"] = train_stats.get("classes", {}).get(name, {}).get("particles", 0)
        row[f"{stats_label} pixel share"] = train_stats.get("classes", {}).get(name, {}).get("pixel_share", 0.0)
        table6.append(row)
    model_of = {n: document["members"][n]["model"] for n in document["members"]}
    comparison = [c for c in members if model_of[c["members"][0]] in COMPARISON_MODELS]
    compared = ([(model_of[c["members"][0]] + f" ({c['members'][0]})", c) for c in comparison]
                + [("best member", best_member)] + ([("selected " + selected["key"], selected)] if selected else []))
    table7 = [{"model": label, "mIoU": c["metrics"]["miou"], "mPA": c["metrics"]["mPA"], "F1 (paper)": c["metrics"]["F1_paper"],
               **class_columns(c["metrics"]), "TPI (s)": c["tpi"]}
              for label, c in compared] if comparison else []
    return {"table4_members": table4, "table5_ensembles": table5, "table6_per_class": table6, "table7_comparison": table7}


def _value(metrics: dict, key: str) -> float:
    value = metric_value(metrics, key)
    return float("-inf") if math.isnan(value) else value


def write_reports(document: dict, prepared, previews: list[dict], folder: str, storage: Storage, settings,
                  stats_split: str = "train", stats_label: str = "train") -> dict:
    """Tables (CSV + Markdown), ``reports.json`` and the figures under ``folder`` (a staging folder:
    ``staged_outputs``); their names are added to ``document`` (``report_files``: what the next run into the
    folder replaces). Returns the tables (``print_reports`` says them once they are in place)."""
    tables = build_tables(document, prepared.stats.get(stats_split, {}), settings.baselines, stats_label)
    for name, rows in tables.items():
        if rows:
            text_csv, text_md = _table(rows)
            storage.write_text(join_uri(folder, f"{name}.csv"), text_csv)
            storage.write_text(join_uri(folder, f"{name}.md"), text_md)
    storage.write_json(join_uri(folder, "reports.json"), tables)
    _figures(document, tables, previews, folder, storage, settings.baselines)
    root = absolute_uri(folder).rstrip("/") + "/"
    document["report_files"] = sorted(info.uri[len(root):] for info in storage.list(root)
                                      if "/" not in info.uri[len(root):])
    return tables


def print_reports(tables: dict, footer: str) -> None:
    """The tables as Markdown on standard output, then ``footer`` (the selection and its manifest)."""
    print("".join(f"\n{name.replace('_', ' ')}\n{_table(rows)[1]}" for name, rows in tables.items() if rows))
    print(footer)


# the tables and figures a run may or may not write (an empty table, no best-member confusion, other overlays)
_TABLES = ("table4_members", "table5_ensembles", "table6_per_class", "table7_comparison")
_REPORT_FILES = (*(f"{t}.{kind}" for t in _TABLES for kind in ("csv", "md")), "reports.json", "iou_per_class.png",
                 "confusion_selected.png", "confusion_best_member.png", "overlay_*.png")
# each command's documents in the order they are put in place, the last its marker, written last (publish_outputs):
# evaluation.json, which only evaluate writes (select may replace the manifest: a marker compared with the staged
# one must not change meanwhile)
EVALUATION_DOCUMENTS = ("manifest.json", COMMAND_MARKERS["evaluate"])
SCORE_DOCUMENTS = (COMMAND_MARKERS["score"],)
# what says a folder holds a finished evaluation or scoring
_DOCUMENTS = (EVALUATION_DOCUMENTS[-1], SCORE_DOCUMENTS[-1])


def publish_outputs(storage: Storage, out: str, command: str, last: tuple[str, ...]) -> None:
    """Put the complete outputs ``command`` staged (``staging_folder``) in place in ``out``
    (``Storage.publish_staged``): ``last`` (the documents that say the folder is complete, the final one written
    last into the staging folder) leave ``out`` first and come back last, so a reader never takes one run's
    manifest with another's evaluation or tables. An earlier run's tables and figures this one does not write (a
    comparison table without baselines now, overlays of images no longer in the split) are deleted, those its
    document lists (``_earlier_reports``); every other file in ``out`` (``select``'s manifests, someone's notes)
    is kept.

    Raises:
        StorageError: a listing, copy or delete failed (``out`` then lacks ``last``: it reads as unfinished, and
            ``finish_publication`` completes it)."""
    storage.publish_staged(out, command, last, _earlier_reports(storage, out))


def finish_publication(storage: Storage, out: str, command: str, last: tuple[str, ...]) -> bool:
    """Before a run of ``command`` into ``out``: complete outputs whose publication was cut short (a killed
    process, a failed request; ``out`` then lacks its documents) are put in place, so that ``out`` holds a finished
    run whatever this one does; the remains of a run that failed before its outputs were complete are deleted.
    Returns whether outputs were put in place."""
    return storage.finish_staged(out, command, last, lambda: _earlier_reports(storage, out, True),
                                 _unstaged_documents(storage, out, command))


def _unstaged_documents(storage: Storage, out: str, command: str) -> tuple[str, ...]:
    """The documents a complete staged run of ``command`` into ``out`` has not written: the manifest of an
    evaluation whose staged record selected no candidate (no candidate fits the TPI budget)."""
    from minseg.ensemble.manifest import unselected_reason

    if command != "evaluate":
        return ()
    staged = join_uri(staging_folder(out, command), EVALUATION_DOCUMENTS[-1])  # none, unreadable: finish_staged says
    return ("manifest.json",) if unselected_reason(storage, staged) else ()


def complete_publication(storage: Storage, out: str, command: str, last: tuple[str, ...]) -> bool:
    """For a command that reads ``out`` (``select``): outputs complete in the staging folder but not in place (a
    publication cut short) are put in place now, without predicting again; a staging folder still being written
    is left alone. Returns whether outputs were put in place."""
    if storage.exists(join_uri(out, last[-1])) or not storage.exists(join_uri(staging_folder(out, command),
                                                                              last[-1])):
        return False
    return finish_publication(storage, out, command, last)


def _earlier_reports(storage: Storage, out: str, cut_short: bool = False) -> tuple[str, ...]:
    """The tables and figures of the run in ``out``: those its document (``evaluation.json``, ``score.json``)
    lists; where it lists none (written before the list was kept) or has left (a publication ``cut_short``),
    the files directly in ``out`` named as minseg's (``_REPORT_FILES``) when a document was there."""
    for document in _DOCUMENTS:
        try:
            data = storage.read_bytes(join_uri(out, document))
        except ObjectNotFoundError:
            continue
        try:
            listed = json.loads(data).get("report_files")
        except (ValueError, AttributeError):  # damaged, not a mapping: minseg's names, as before the list
            listed = None
        if isinstance(listed, list):  # only names of minseg's reports: a hand-edited list deletes nothing else
            return tuple(name for name in listed if isinstance(name, str) and _report_name(name))
        cut_short = True
    if not cut_short:
        return ()
    root = absolute_uri(out).rstrip("/") + "/"
    return tuple(name for name in (info.uri[len(root):] for info in storage.list(root)) if _report_name(name))


def _report_name(name: str) -> bool:
    """Whether ``name`` (relative to a folder) is one of minseg's tables or figures directly in it."""
    return "/" not in name and any(fnmatch.fnmatchcase(name, pattern) for pattern in _REPORT_FILES)


def _png(figure, storage: Storage, uri: str) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    storage.write_bytes(uri, buffer.getvalue())


def _figures(document: dict, tables: dict, previews: list[dict], out: str, storage: Storage,
             baselines: list[str] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    classes = document["classes"]["classes"]
    names = [c["name"] for c in classes]
    candidates = {c["key"]: c for c in document["candidates"]}

    # per-class IoU bars: best baseline / best member / selected
    table6 = tables["table6_per_class"]
    series = [k for k in table6[0] if k.endswith("IoU")]
    figure, axis = plt.subplots(figsize=(max(6, len(names) * 0.9), 3.8))
    width = 0.8 / max(1, len(series))
    for i, label in enumerate(series):
        # an undefined IoU (the class neither in the test labels nor predicted) is no bar, not a bar of 0
        values = [np.nan if (v := row[label]) is None or (isinstance(v, float) and math.isnan(v)) else v
                  for row in table6]
        axis.bar(np.arange(len(names)) + i * width, values, width, label=label)
    axis.set_xticks(np.arange(len(names)) + width * (len(series) - 1) / 2, names, rotation=30, ha="right")
    axis.set_ylabel("IoU (test)")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8)
    axis.set_title("Per-class IoU")
    _png(figure, storage, join_uri(out, "iou_per_class.png"))

    # normalised confusion matrices: best member and the selected ensemble
    best_member = best_member_of(document, baselines)["key"]  # table 6's and 7's, never a baseline
    selected = document["selected"]  # None: none selected (no candidate fits the TPI budget)
    pairs = [("best_member", best_member)] + ([("selected", selected)] if selected else [])
    for label, key in pairs if selected != best_member else pairs[1:]:
        matrix = np.asarray(candidates[key]["metrics"]["confusion"], dtype=np.float64)
        normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        figure, axis = plt.subplots(figsize=(len(names) * 0.6 + 2, len(names) * 0.6 + 1.5))
        image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
        axis.set_yticks(range(len(names)), names)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        for (i, j), v in np.ndenumerate(normalised):
            if v >= 0.01:
                axis.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.5 else "black")
        figure.colorbar(image, ax=axis, fraction=0.046)
        role = "best member, selected" if selected == best_member else label.replace("_", " ")
        axis.set_title(f"{key} ({role}; rows normalised)")
        _png(figure, storage, join_uri(out, f"confusion_{label}.png"))

    # overlays: image / truth / best member / selected ensemble (one panel when the selection is that member)
    palette = np.array([c["color"] for c in classes] + [[255, 255, 255]] * (256 - len(classes)), dtype=np.uint8)
    legend = [Patch(color=np.array(c["color"]) / 255, label=c["name"]) for c in classes]
    groups = document.get("channels") or [{"mode": "rgb"}]  # a scene's images: overlays show the first
    first = ChannelMode(groups[0]["mode"]).count(groups[0].get("bands"))
    for preview in previews:
        panels = [("image", display_rgb(preview["image"], first)), ("truth", palette[preview["truth"]])]
        if selected == best_member:
            panels.append((f"{selected} (best member, selected)", palette[preview["labels"][selected]]))
        else:
            panels.append((f"{best_member} (best member)", palette[preview["labels"][best_member]]))
            if selected:
                panels.append((f"{selected} (selected)", palette[preview["labels"][selected]]))
        figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2))
        for axis, (title, picture) in zip(axes, panels):
            axis.imshow(picture)
            axis.set_title(title, fontsize=9)
            axis.axis("off")
        figure.legend(handles=legend, loc="lower center", ncol=min(len(legend), 10), fontsize=8)
        _png(figure, storage, join_uri(out, f"overlay_{file_stem(preview['item_id'])}.png"))
