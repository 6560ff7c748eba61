"""Ranking members, building the RUEL-k candidates, fitting learned weights, choosing one.

The Res-UNet ensemble paper's RUEL-k is the top k members of a ranking fused by
plurality (PV) or weighted voting (WV, Eq. 5); minseg adds soft, weighted-soft and
learned-weight fusion. A :class:`Candidate` is one answer: a single member, or the
top-k fused in one mode. Candidates are selected by the ranking key, under a
time-per-image (TPI) budget, or by the one-standard-error rule (``select``); the choice
becomes a manifest (``build_manifest``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from pydantic import ValidationError

from minseg.config.base import describe_errors, section_error
from minseg.enums import FusionMode, SelectionRule
from minseg.ensemble.config import EvaluationSettings, SelectionSettings, Tiling
from minseg.ensemble.manifest import EnsembleManifest, ManifestFusion, ManifestMember, file_sha256
from minseg.ensemble.voting import fuse, rank_weights
from minseg.errors import InputError, MinsegError
from minseg.io.images import BIT_DEPTH
from minseg.io.storage import Storage, absolute_uri, join_uri
from minseg.logs import get_logger
from minseg.metrics import ConfusionMatrix, metric_value, metrics_from_confusion

log = get_logger("ensemble.selection")


class BudgetUnmetError(InputError):
    """No candidate runs within the ``tpi_budget`` rule's seconds per image (:func:`select`): a choice to make
    again from the scores (``minseg select --tpi-budget``), not a fault of the evaluation, which is kept."""


MEMBER_PREFIX = "member:"


@dataclass
class Candidate:
    """One candidate answer: a member alone (``mode`` None) or the top-k members fused in ``mode``.

    ``weights``: per member in rank order (WV: k..1; learned: fitted, per member or per member
    and class); ``metrics`` on the test split (what is reported); ``selection_metrics`` on the split the
    candidates are chosen on (validation; empty when the data has none and the choice falls back to test; a
    learned candidate's come from each image's out-of-fold weights, :func:`cross_fit_learned_weights`, not from
    ``weights``, which are fitted on every validation image and used on test);
    ``tpi``: seconds per test image (members + fusion); ``selection_confusions``: per image of the selection split
    (in item-id order, the same for every candidate of an evaluation), its (C, C) confusion matrix (rows: truth),
    int pixel counts: what the ``one_se`` rule resamples.
    """

    key: str
    members: list[str]
    mode: FusionMode | None
    weights: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    tpi: float = 0.0
    selection_metrics: dict = field(default_factory=dict)
    selection_confusions: list = field(default_factory=list)

    @property
    def is_member(self) -> bool:
        return self.mode is None

    @property
    def choosing_metrics(self) -> dict:
        """What ``select`` compares: the selection split's metrics, else (no validation data) the test split's."""
        return self.selection_metrics or self.metrics

    def to_document(self) -> dict[str, Any]:
        return {"key": self.key, "members": self.members, "mode": self.mode.value if self.mode else None,
                "weights": self.weights, "tpi": self.tpi, "metrics": self.metrics,
                "selection_metrics": self.selection_metrics, "selection_confusions": self.selection_confusions}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> "Candidate":
        """A candidate as ``to_document`` wrote it.

        Raises:
            ValueError: an unknown mode, a time per image that is no time (negative, infinite, not a number),
                members that are not distinct names, a key that does not say its mode and member count
                (``RUEL-k-MODE``, ``member:NAME``), confusion matrices that are not square whole pixel counts."""
        key = document["key"]
        mode = FusionMode(document["mode"]) if document.get("mode") else None
        tpi = document.get("tpi", 0.0)
        if isinstance(tpi, bool) or not isinstance(tpi, (int, float)) or not np.isfinite(tpi) or tpi < 0:
            raise ValueError(f"candidate {key}: tpi {tpi!r} is not a time in seconds (finite, 0 or more)")  # a hand
            # edit: it would pass any TPI budget, or none
        members = document["members"]
        if not isinstance(members, list) or not members or len(set(map(str, members))) != len(members):
            raise ValueError(f"candidate {key}: members {members!r} are not distinct member names")
        # its name says what it is (what --candidate takes, what the manifest records): an edit of one without the
        # other would give a manifest named for one ensemble and fusing another
        named = f"{MEMBER_PREFIX}{members[0]}" if mode is None else f"RUEL-{len(members)}-{mode.value.upper()}"
        if key != named or (mode is None and len(members) != 1):
            raise ValueError(f"candidate {key}: its mode {mode.value if mode else None!r} and {len(members)} "
                             f"member(s) make it {named!r}")
        confusions = document.get("selection_confusions") or []
        counts = np.asarray(confusions, dtype=np.float64) if confusions else np.zeros((0, 1, 1))
        if counts.ndim != 3 or counts.shape[1] != counts.shape[2] or not np.isfinite(counts).all() \
                or (counts < 0).any() or (counts != np.round(counts)).any():
            raise ValueError(f"candidate {key}: selection_confusions are not per-image square matrices of pixel "
                             "counts (whole numbers, 0 or more)")
        return cls(key, list(members), mode, document.get("weights") or [], document.get("metrics") or {},
                   float(tpi), document.get("selection_metrics") or {}, confusions)


def refuse_key_of_absent_class(key: str, classes: list[str], support: list[int] | None, split: str,
                               setting: str = "--key / evaluation.rank_key", choosing: str = "candidates") -> None:
    """A per-class key (``iou:pyrite``, ``recall:pyrite``, ...) chooses nothing on a split without a true pixel of
    its class: a candidate that predicts none of it scores NaN (undefined), one with stray pixels IoU 0, which
    then wins; recall is NaN for every candidate and the tie-break picks. ``support``: true pixels per class on
    ``split`` (metrics' ``support``; None: not known, nothing checked). ``setting`` names where the key was set and
    ``choosing`` what it chooses between (training: a member's ``checkpoint_metric``, its epochs).

    Raises:
        InputError: naming the key, the class, the split, and the keys that can choose instead.
    """
    name, _, cls = key.partition(":")
    if not cls or support is None or cls not in classes:
        return
    if support[classes.index(cls)] > 0:
        return
    present = [c for c, n in zip(classes, support) if n > 0]
    raise InputError(f"{setting} {key}: class {cls!r} has no true pixels on the {split} split, "
                     f"which chooses, so {name}:{cls} cannot tell the {choosing} apart (undefined for those that "
                     f"predict none of it, 0 for those with stray pixels); choose by another key: miou, mean_f1, or "
                     f"a per-class key of a class the {split} split holds ({', '.join(present) or 'none'})")


def choosing_support(metrics: dict) -> list[int] | None:
    """True pixels per class behind ``metrics`` (its ``support``, else its confusion matrix's rows; None: neither)."""
    if metrics.get("support") is not None:
        return [int(n) for n in metrics["support"]]
    if metrics.get("confusion") is not None:
        return [int(sum(row)) for row in metrics["confusion"]]
    return None


def _key_value(metrics: dict, key: str) -> float:
    value = metric_value(metrics, key)
    return -np.inf if np.isnan(value) else value


def rank_members(metrics: dict[str, dict], key: str) -> list[str]:
    """Member names best first by the key; ties broken by name, deterministically."""
    return sorted(metrics, key=lambda name: (-_key_value(metrics[name], key), name))


def ensemble_sizes(settings: EvaluationSettings, voters: int, members: int | None = None) -> range:
    """The k of the RUEL-k candidates: ``max(2, k_min)`` to ``min(k_max, voters)``; checked before any pass.

    ``voters``: the members ensembles are drawn from (``evaluation.voters``, default every evaluated member);
    ``members``: how many are evaluated (for the message). One voter builds no ensemble (an empty range: the
    caller warns); with two or more, an empty range is a mistake.

    Raises:
        InputError: ``k_min`` above the number of voters, or ``k_max`` below ``max(2, k_min)``: naming both
            settings and how many members are evaluated.
    """
    k_max = min(settings.k_max or voters, voters)
    sizes = range(max(2, settings.k_min), k_max + 1)
    if not sizes and voters >= 2:
        evaluated = f"{members} member(s) evaluated, {voters} of them voters" if members not in (None, voters) \
            else f"{voters} member(s) evaluated"
        raise InputError(
            f"evaluation.k_min {settings.k_min} and evaluation.k_max {settings.k_max} build no RUEL-k ensemble from "
            f"{evaluated} (k from max(2, k_min) to min(k_max, voters)): lower k_min to at most {voters}"
            + (" and raise k_max to at least 2" if settings.k_max is not None and settings.k_max < 2 else "")
            + " (or evaluate more members)")
    return sizes


def candidate_ensembles(ranked: list[str], settings: EvaluationSettings, learned: dict[int, list]) -> list[Candidate]:
    """RUEL-k for every k in [max(2, k_min), k_max] in every configured mode (learned only where fitted).

    Raises:
        InputError: as :func:`ensemble_sizes`.
    """
    candidates = []
    for k in ensemble_sizes(settings, len(ranked)):
        for mode in settings.modes:
            if mode is FusionMode.LEARNED:
                if k not in learned:
                    continue
                weights = learned[k]
            elif mode in (FusionMode.WV, FusionMode.WEIGHTED_SOFT):
                weights = rank_weights(k).tolist()
            else:
                weights = [1] * k
            candidates.append(Candidate(f"RUEL-{k}-{mode.value.upper()}", ranked[:k], mode, weights))
    return candidates


def fit_learned_weights(samples: list[dict], k: int, num_classes: int, key: str, class_names, per_class: bool,
                        ignore_index: int) -> list:
    """Coordinate ascent on validation pixels: weights per member (or per member and class)
    maximising the ranking key of the weighted soft vote. Never sees test data. The weights stay what a manifest
    accepts (``manifest.check_manifest``): never all 0, per class neither.

    ``samples``: per image, ``probs`` (M, C, P) float16 in rank order and ``truth`` (P,) uint8.
    """
    probs = torch.from_numpy(np.concatenate([s["probs"][:k] for s in samples], axis=2).astype(np.float32))
    truth = torch.from_numpy(np.concatenate([s["truth"] for s in samples]).astype(np.int64))
    shape = (k, num_classes) if per_class else (k,)
    weights = torch.ones(shape)
    grid = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]

    def score(w):
        labels, _ = fuse(probs, FusionMode.LEARNED, w)
        matrix = ConfusionMatrix(num_classes, ignore_index).update(labels[None], truth[None]).matrix.numpy()
        value = metric_value(metrics_from_confusion(matrix, class_names), key)
        return -1.0 if np.isnan(value) else value

    best = score(weights)
    for _ in range(3):
        improved = False
        for index in np.ndindex(*shape):
            for value in grid:
                trial = weights.clone()
                trial[index] = value
                if (trial.sum(dim=0) <= 0).any():  # every class (or the vote) keeps a weight above 0
                    continue
                result = score(trial)
                if result > best + 1e-9:
                    best, weights, improved = result, trial, True
        if not improved:
            break
    return weights.tolist()


def cross_fit_learned_weights(samples: dict[str, dict], k: int, num_classes: int, key: str, class_names,
                              per_class: bool, ignore_index: int, folds: int,
                              groups: dict[str, str] | None = None) -> dict[str, list]:
    """Out-of-fold learned weights, so that a learned candidate is not judged on the pixels its weights were fit
    to: the images of ``samples`` (item id -> sample as in :func:`fit_learned_weights`) go, by group (``groups``:
    item id -> the group its split was chosen by, e.g. the images of one scene; default: each image alone) in
    sorted order and round robin, into ``min(folds, groups)`` folds, and every image gets the weights fitted on the
    other folds' samples. Scoring each image with its own out-of-fold weights estimates how the weights fitted on
    every image will do on images they never saw (the cross-validated level-one data of stacked generalisation:
    Wolpert 1992, Breiman 1996); the in-sample score is optimistic, and would favour ``learned`` over the modes
    that fit nothing.

    Returns:
        item id -> weights, every item of ``samples``; empty for fewer than two groups (nothing to hold out).
    """
    group_of = {item: (groups or {}).get(item, item) for item in samples}
    ordered = sorted(set(group_of.values()))
    folds = min(folds, len(ordered))
    if folds < 2:
        return {}
    fold_of_group = {group: index % folds for index, group in enumerate(ordered)}
    fold_of = {item: fold_of_group[group] for item, group in group_of.items()}
    held_out: dict[str, list] = {}
    for fold in range(folds):
        fitted = fit_learned_weights([samples[i] for i in sorted(samples) if fold_of[i] != fold], k, num_classes,
                                     key, class_names, per_class, ignore_index)
        held_out.update({i: fitted for i in samples if fold_of[i] == fold})
    return held_out


def select(candidates: list[Candidate], key: str, selection: SelectionSettings,
           groups: list[str] | None = None, split: str = "selection") -> Candidate:
    """The candidate ``selection.rule`` picks on the selection split (validation: ``Candidate.choosing_metrics``;
    the test split only reports):

    - ``best``: the best by ``key``; ties: :func:`tie_order` (fewer members, the fusion fitted least to
      validation, then by name).
    - ``tpi_budget``: the same among the candidates within ``selection.tpi_budget_s`` s/image.
    - ``one_se``: among the candidates whose ``key`` is within one standard error of the best's
      (:func:`within_one_standard_error`: ``selection.bootstrap_draws`` resamples of the selection images, or of
      their ``groups``), the one with the most members (:func:`most_members`). The one-standard-error rule
      of Breiman et al. (1984, *Classification and Regression Trees*, §3.4.3; Hastie, Tibshirani & Friedman
      2009, §7.10) turned round: there it prefers the simplest model within the noise, here the ensemble
      averaging the most members, whose variance is the lowest when the members are of comparable strength
      (Krogh & Vedelsby 1995): on a few validation images a difference smaller than its standard error does not
      say that fewer members are better.

    ``split``: the name of the split that chooses (for messages).

    Raises:
        InputError: a per-class ``key`` whose class has no true pixels on the choosing split
            (:func:`refuse_key_of_absent_class`); ``one_se`` on
            candidates without per-image confusion matrices (an evaluation written before them: evaluate again).
        BudgetUnmetError: no candidate fits the budget (names the fastest).
    """
    if candidates:
        metrics = candidates[0].choosing_metrics  # every candidate is scored against the same truth
        metric_value(metrics, key)  # an unknown metric or class: its own error first
        refuse_key_of_absent_class(key, metrics.get("classes") or [], choosing_support(metrics), split)
    rule, budget = selection.rule, selection.tpi_budget_s
    pool = [c for c in candidates if rule is not SelectionRule.TPI_BUDGET or c.tpi <= budget]
    if not pool:
        fastest = min(candidates, key=lambda c: c.tpi)
        raise BudgetUnmetError(f"no candidate fits the TPI budget of {budget:g} s per image (fastest: {fastest.key}, "
                         f"{fastest.tpi:.3f} s)")
    if rule is not SelectionRule.ONE_SE:
        return _by_key(pool, key)[0]
    return most_members(within_one_standard_error(pool, key, selection.bootstrap_draws, groups))


def most_members(within: list[tuple[Candidate, float]]) -> Candidate:
    """The ``one_se`` choice from :func:`within_one_standard_error`'s list: the most members; ties: the first
    (the better by the key, then :func:`tie_order`)."""
    return max(within, key=lambda pair: len(pair[0].members))[0]  # max keeps the first of equals


# From no weights (a member alone, PV, SOFT) through weights from the validation ranks (WV, WEIGHTED_SOFT) to weights
# fitted on validation pixels (LEARNED).
_FITTED_LEAST_FIRST = (None, FusionMode.PV, FusionMode.SOFT, FusionMode.WV, FusionMode.WEIGHTED_SOFT,
                       FusionMode.LEARNED)


def tie_order(candidate: Candidate) -> tuple:
    """How candidates of equal score on the selection split are ordered: fewer members (the cheaper to run), then
    the fusion that took less from validation (``_FITTED_LEAST_FIRST``: of equal scores, the one fitted less to the
    split that scored it), then by key. Fixed, so one evaluation always picks one candidate: equal candidates are
    common (a learned fusion whose fitted weights stay equal is SOFT; RUEL-2 in PV or WV is its top member) and
    time per image, the tie-break before, differed between them by milliseconds of noise from run to run."""
    return len(candidate.members), _FITTED_LEAST_FIRST.index(candidate.mode), candidate.key


# Scores this close are one score: floating-point noise must not decide between candidates.
_TIE = 1e-12


def _by_key(candidates: list[Candidate], key: str) -> list[Candidate]:
    """Best first by ``key`` on the selection split; ties (within ``_TIE`` of the best of their run, scores taken
    from the highest down): :func:`tie_order`."""
    values = {c.key: _key_value(c.choosing_metrics, key) for c in candidates}
    if infinite := next((name for name, value in values.items() if np.isinf(value) and value > 0), None):
        # no metric is infinite (NaN, undefined, reads as -inf: last); one edited to "Infinity" would always win
        raise ValueError(f"candidate {infinite}: {key} is infinite, which no score is")
    level, head = {}, None
    for name in sorted(values, key=values.__getitem__, reverse=True):
        if head is None or head - values[name] > _TIE:
            head = values[name]
        level[name] = head
    return sorted(candidates, key=lambda c: (-level[c.key], *tie_order(c)))


def within_one_standard_error(candidates: list[Candidate], key: str, draws: int = 1000,
                              groups: list[str] | None = None) -> list[tuple[Candidate, float]]:
    """The candidates whose ``key`` on the selection split is at most one standard error (:func:`standard_errors`,
    of the difference from the best) below the best's, best first, each with that standard error (the best's: 0).

    Of candidates with the same confusion matrix on every selection image, only the first by :func:`tie_order`
    (the fewest members) is in: the others label the split as it does, at more cost (RUEL-2 in PV or WV, and
    RUEL-3 in WV, are their top member: its vote wins every tie). The best of those kept is always in.

    Raises:
        InputError: as :func:`standard_errors`.
    """
    ordered = _by_key(candidates, key)
    errors = standard_errors(ordered, key, draws, groups=groups)
    best = _key_value(ordered[0].choosing_metrics, key)
    kept, seen = set(), []
    for candidate in sorted(ordered, key=tie_order):
        confusions = np.asarray(candidate.selection_confusions)
        if not any(np.array_equal(confusions, other) for other in seen):
            kept.add(candidate.key)
            seen.append(confusions)
    within = []
    for candidate in (c for c in ordered if c.key in kept):
        if not within or best - _key_value(candidate.choosing_metrics, key) <= errors[candidate.key] + _TIE:
            within.append((candidate, errors[candidate.key]))
    return within


def standard_errors(candidates: list[Candidate], key: str, draws: int = 1000, seed: int = 0,
                    groups: list[str] | None = None) -> dict[str, float]:
    """Paired bootstrap over the selection split's images: each of ``draws`` resamples (with replacement, as many
    images as the split has; ``seed`` fixed, so a choice is reproducible) sums every candidate's per-image
    confusion matrices over the same images and scores ``key`` on them; a candidate's standard error is the
    standard deviation over the resamples of the first candidate's score minus its own (Efron & Tibshirani 1993,
    *An Introduction to the Bootstrap*, ch. 6). Paired, because the candidates are scored on the same images: the
    hard images are hard for all of them, and that shared part is not a difference between them.

    ``groups``: per selection image (in the order of ``selection_confusions``), the group its split was chosen by
    (``data.split.group_by``: the images of one scene, the tiles of one photograph); groups are drawn whole, as
    their images are not independent. A resample where a score is undefined (a per-class key whose class it lacks)
    does not count.

    ``candidates``: the first is the one compared against (the best); all with ``selection_confusions`` of the
    same images. Returns key -> standard error (0 for the first, and for all when there is one image or group).

    Raises:
        InputError: a candidate has no per-image confusion matrices, or not as many as the first; ``groups`` not
            one per image.
    """
    stacks = []
    for candidate in candidates:
        if not candidate.selection_confusions:
            raise InputError(f"{candidate.key} has no per-image confusion matrices on the selection split (an "
                             "evaluation written before the one_se rule): run minseg evaluate again")
        stacks.append(np.asarray(candidate.selection_confusions, dtype=np.int64))
    images = stacks[0].shape[0]
    if any(stack.shape != stacks[0].shape for stack in stacks):
        raise InputError("candidates scored on different selection images: "
                         + ", ".join(f"{c.key} {len(c.selection_confusions)}" for c in candidates))
    if groups is not None and len(groups) != images:
        raise InputError(f"{len(groups)} selection groups for {images} selection images")
    names = candidates[0].choosing_metrics.get("classes")
    index = np.unique(np.asarray(groups if groups is not None else range(images)), return_inverse=True)[1]
    units = int(index.max()) + 1  # what is drawn: groups, or images
    if units < 2:
        return {c.key: 0.0 for c in candidates}
    rng = np.random.default_rng(seed)
    scores = np.empty((draws, len(candidates)))
    for d in range(draws):
        counts = np.bincount(rng.integers(0, units, units), minlength=units)[index]  # times each image is drawn
        for j, stack in enumerate(stacks):
            scores[d, j] = metric_value(metrics_from_confusion(np.tensordot(counts, stack, axes=1), names), key)
    spread = np.nanstd(scores[:, :1] - scores, axis=0, ddof=1)
    return {c.key: float(np.nan_to_num(s)) for c, s in zip(candidates, spread)}


EVALUATION_KEYS = ("run", "rank_key", "members", "rank_metrics", "candidates", "classes", "tiling", "tta",
                   "normalization")  # what build_manifest and select read


def read_evaluation(folder: str, storage: Storage) -> dict:
    """The ``evaluation.json`` of an evaluation folder (what ``minseg select`` chooses from).

    Raises:
        InputError: ``folder`` is a file (a manifest, or the evaluation.json itself: give its folder), it holds no
            evaluation.json, or the document lacks keys a choice needs (naming them).
    """
    import os

    from minseg.io.storage import ObjectNotFoundError, glob_uris, parse_uri

    location = parse_uri(folder)
    if not location.is_s3 and os.path.isfile(location.path):
        raise InputError(f"{folder} is a file; give the evaluation folder that holds evaluation.json "
                         f"({os.path.dirname(os.path.abspath(location.path))})")
    uri = join_uri(folder, "evaluation.json")
    try:
        document = storage.read_json(uri)
    except ObjectNotFoundError:
        hint = ""
        if storage.exists(join_uri(folder, "members.json")):  # a training run: its evaluations lie below it
            found = sorted({uri.rsplit("/", 2)[-2] for uri in glob_uris(join_uri(folder, "evaluation", "*",
                                                                                  "evaluation.json"), storage)})
            hint = (f" ({folder} is a training run: its evaluations are in "
                    f"{join_uri(folder, 'evaluation', '<name>')}"
                    + (f"; here: {', '.join(found)}" if found else "; none yet: run minseg evaluate") + ")")
        raise InputError(f"{uri}: no such file; give the folder minseg evaluate wrote (it holds evaluation.json "
                         f"and manifest.json){hint}") from None
    if not isinstance(document, dict):
        raise InputError(f"{uri}: not an evaluation record (a JSON object expected)")
    missing = [key for key in EVALUATION_KEYS if key not in document]
    if missing:
        raise InputError(f"{uri}: not a complete evaluation record, missing {', '.join(missing)} (written by another "
                         "version, or edited): run minseg evaluate again")
    return _relocated(document, folder, storage)


def _relocated(document: dict, folder: str, storage: Storage) -> dict:
    """``document`` with its members' checkpoints under the run that holds ``folder`` (``<run>/evaluation/<name>``)
    when that run was copied or moved since evaluation recorded where it was (as ``minseg.io.runs`` readers find
    checkpoints): a copy's manifest names the copy's weights, not the original's, which may be gone or retrained."""
    recorded, here = document["run"].rstrip("/"), absolute_uri(folder).rstrip("/")
    parts = here.rsplit("/", 2)
    if len(parts) < 3 or parts[1] != "evaluation":
        return document  # written to its own evaluation.output_uri: its run is where it says
    run = parts[0]
    if run == recorded or not storage.exists(join_uri(run, "members.json")):
        return document
    members = {name: {**info, "checkpoint": run + info["checkpoint"][len(recorded):]}
               if info["checkpoint"].startswith(recorded + "/") else info
               for name, info in document["members"].items()}
    return {**document, "run": run, "members": members}


def _own_normalization(member: dict | None, ensemble: dict) -> dict | None:
    """A member's statistics when they differ from the ensemble's, else None (the manifest stays lean)."""
    from minseg.models.pretrained import same_normalization

    if not member or same_normalization(member, ensemble):
        return None
    return {"mean": list(member["mean"]), "std": list(member["std"])}


def read_candidates(document: dict) -> list[Candidate]:
    """The candidates of an evaluation record (``evaluation.json``), each as :meth:`Candidate.from_document` reads
    it: at least one, each named once, each member one the record lists.

    Raises:
        ValueError: naming the candidate and what is wrong (``evaluation_errors`` names the file)."""
    candidates = [Candidate.from_document(c) for c in document["candidates"]]
    if not candidates:
        raise ValueError("candidates: the record lists none")
    seen: set[str] = set()
    for candidate in candidates:
        if candidate.key in seen:
            raise ValueError(f"candidates: {candidate.key} is listed twice")
        seen.add(candidate.key)
        if unknown := [m for m in candidate.members if m not in document["members"]]:
            raise ValueError(f"candidate {candidate.key}: members {', '.join(map(repr, unknown))} are not among the "
                             f"record's members ({', '.join(document['members'])})")
    return candidates


@contextmanager
def evaluation_errors(uri: str):
    """Yields ``uri`` (an ``evaluation.json``); an error interpreting the document it holds (edited by hand,
    damaged: a candidate that is no object, a number in words, an unknown fusion mode) becomes one InputError
    naming it and the key where it can be told, not a traceback from deep in the choice."""
    try:
        yield uri
    except MinsegError:
        raise
    except ValidationError as exc:
        raise InputError(f"{uri}: {describe_errors(exc)} (the record was edited or damaged: run minseg evaluate "
                         "again)") from None
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        # kept for --log-level debug: a fault of minseg's own would otherwise read as a damaged record
        log.debug("evaluation record not understood", exc_info=True)
        what = f"no key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise InputError(f"{uri}: cannot be read as an evaluation record ({what}): it was edited or damaged; run "
                         "minseg evaluate again") from None


def build_manifest(document: dict, key: str, storage: Storage, name: str,
                   selection: SelectionSettings | None = None, rank_key: str | None = None,
                   hashes: dict[str, str] | None = None, chosen_by: str | None = None,
                   source: str = "evaluation.json") -> EnsembleManifest:
    """The manifest for one candidate of an evaluation document (``evaluation.json``); ``selection`` and
    ``rank_key``: the rule and key that chose it (default: the evaluation's, as recorded in the document);
    ``hashes``: the members' weights' sha256 as just read (evaluate's own), else each file is read again;
    ``chosen_by``: what chose it when no rule did (``--candidate``), recorded instead of a rule; ``source``: the
    document's file, named in errors.

    Raises:
        InputError: the document has no candidate ``key`` (names the ones it has); a member's weights differ from
            the ones the document scored (retrained since: its scores are not theirs).
    """
    candidates = {c.key: c for c in read_candidates(document)}
    if key not in candidates:
        raise InputError(f"no candidate {key!r}; candidates: {', '.join(candidates)}")
    candidate = candidates[key]
    members = []
    for rank, member in enumerate(candidate.members):
        info = document["members"][member]
        weights = join_uri(info["checkpoint"], "model.pt")
        sha256 = hashes[member] if hashes is not None else file_sha256(storage, weights)
        if info.get("sha256", sha256) != sha256:  # recorded since 2026-12-06
            raise InputError(f"member {member}: {weights} is not the file this evaluation scored (retrained or "
                             f"replaced since: sha256 {sha256[:12]}…, scored {info['sha256'][:12]}…); its scores "
                             "would go into the manifest with other weights: run minseg evaluate again")
        members.append(ManifestMember(
            name=member, model=info["model"], model_options=info["model_options"], checkpoint=info["checkpoint"],
            sha256=sha256, rank=rank,
            metrics={k: v for k, v in document["rank_metrics"][member].items() if not isinstance(v, list)},
            normalization=_own_normalization(info.get("normalization"), document["normalization"]),
        ))
    mode = candidate.mode or FusionMode.SOFT  # a single member: its own probabilities
    try:
        tiling = Tiling.model_validate(document["tiling"])
    except ValidationError as exc:
        raise section_error(exc, "tiling", source) from None
    return EnsembleManifest(
        name=name, created=datetime.now(timezone.utc).isoformat(timespec="seconds"), source_run=document["run"],
        members=members, fusion=ManifestFusion(mode=mode, weights=candidate.weights, tta=document["tta"]),
        classes=document["classes"], tiling=tiling,
        normalization=document["normalization"], channels=document.get("channels"),
        bit_depth=document.get("bit_depth", BIT_DEPTH),
        selection={**({"chosen_by": chosen_by} if chosen_by else
                      selection.model_dump(mode="json") if selection else document["selection"]),
                   **({} if chosen_by else {"key": rank_key or document["rank_key"]}), "candidate": key,
                   "split": document.get("selection_split", "test"),
                   "member_checkpoint": document.get("member_checkpoint", "best")},
        metrics={"tpi_s": candidate.tpi, **{k: v for k, v in candidate.metrics.items() if k != "confusion"}},
    )
