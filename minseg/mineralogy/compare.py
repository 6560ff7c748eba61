"""How far a predicted slide's mineralogy is from its reference mask's: the figure a user needs before
trusting the numbers (modal mineralogy, liberation, association and sizes, each computed from the prediction
and from the mask the same way, then differenced)."""

from __future__ import annotations

import numpy as np


def _pair(predicted: float | None, reference: float | None) -> dict:
    error = None if predicted is None or reference is None else round(predicted - reference, 4)
    return {"predicted": predicted, "reference": reference, "error": error}


def _mean_abs(rows: dict, key: str = "error") -> float | None:
    values = [abs(r[key]) for r in rows.values() if r.get(key) is not None]
    return round(float(np.mean(values)), 4) if values else None


def _relative(predicted: float | None, reference: float | None) -> float | None:
    if predicted is None or not reference:
        return None
    return round(100.0 * (predicted - reference) / reference, 2)


def compare_mineralogy(predicted: dict, reference: dict) -> dict:
    """Errors of a predicted ``mineralogy.json`` document against the reference mask's (same classes).

    Returns a dict with, per mineral (sample classes present in either):

    - ``modal``: sample area % and weight %, predicted, reference and error (percentage points, signed),
      and ``mae_pp``: the mean absolute error of sample area % over the minerals;
    - ``liberation``: liberated % (the 100 % class), same layout, and ``mae_pp``;
    - ``association``: ``misassigned_pp``, the percentage of the mineral's boundary given to another partner
      than the reference gives it: half the L1 distance between its two association rows (its boundary
      shares with each class, background classes included), the total variation distance of the two
      partner distributions, 0-100 and independent of how many classes the map has (a mean over the classes
      shrank as classes absent from both maps were added); None when the mineral has no boundary in one of
      the maps. ``free_surface`` pairs the free surface %; ``mean_misassigned_pp`` is the mean over the minerals
      with a ``misassigned_pp``;
    - ``sizes``: the mass-weighted P80 of the mineral's grains and of the particles, predicted, reference and
      ``error_pct`` (relative, %).

    Raises:
        ValueError: the two documents have different classes.
    """
    if predicted["classes"] != reference["classes"]:
        raise ValueError(f"the prediction's classes {predicted['classes']} differ from the reference's "
                         f"{reference['classes']}")
    background = set(reference["background_classes"])
    modal_p, modal_r = predicted["modal_mineralogy"], reference["modal_mineralogy"]
    minerals = [n for n in reference["classes"] if n not in background
                and (modal_p[n]["pixels"] or modal_r[n]["pixels"])]
    modal = {n: {"sample_area_pct": _pair(modal_p[n]["sample_area_percent"], modal_r[n]["sample_area_percent"]),
                 "weight_pct": _pair(modal_p[n]["weight_percent"], modal_r[n]["weight_percent"])} for n in minerals}
    result = {"minerals": minerals,
              "modal": {"minerals": modal, "mae_pp": _mean_abs({n: m["sample_area_pct"] for n, m in modal.items()})}}
    if predicted["liberation"] is not None and reference["liberation"] is not None:
        liberation = {n: _pair(predicted["liberation"][n]["liberated_pct"], reference["liberation"][n]["liberated_pct"])
                      for n in minerals}
        result["liberation"] = {"minerals": liberation, "mae_pp": _mean_abs(liberation)}
    association = {}
    for name in minerals:
        row_p, row_r = predicted["association"][name], reference["association"][name]
        misassigned = None
        if row_p["boundary_px"] and row_r["boundary_px"]:
            # both rows sum to 100: the shares one gives in excess are what the other gives elsewhere
            misassigned = round(0.5 * sum(abs(row_p["shared_pct"][k] - row_r["shared_pct"][k])
                                          for k in row_r["shared_pct"]), 4)
        association[name] = {"misassigned_pp": misassigned,
                             "free_surface": _pair(row_p["free_surface_pct"], row_r["free_surface_pct"])}
    result["association"] = {"minerals": association,
                             "mean_misassigned_pp": _mean_abs(association, "misassigned_pp")}
    sizes = {}
    for name in minerals:
        p80_p = predicted["grains"][name].get("size", {}).get("mass", {}).get("p80")
        p80_r = reference["grains"][name].get("size", {}).get("mass", {}).get("p80")
        sizes[name] = {"grain_p80": {"predicted": p80_p, "reference": p80_r, "error_pct": _relative(p80_p, p80_r)}}
    if predicted["particles"] is not None and reference["particles"] is not None:
        p80_p = predicted["particles"]["size"]["mass"]["p80"]
        p80_r = reference["particles"]["size"]["mass"]["p80"]
        sizes["particles"] = {"p80": {"predicted": p80_p, "reference": p80_r, "error_pct": _relative(p80_p, p80_r)},
                              "count": {"predicted": predicted["particles"]["count"],
                                        "reference": reference["particles"]["count"]}}
    result["sizes"] = sizes
    result["unit"] = reference["unit"]
    return result
