"""The class map recorded with a checkpoint against the one a config gives now (resume, evaluate)."""

from minseg.config.base import validate_config
from minseg.data.classmap import ClassMap, class_map_difference
from minseg.data.config import ClassMapSettings


def classes(entries, **extra):
    return ClassMap.from_settings(validate_config({"classes": entries, **extra}, ClassMapSettings))


def test_what_changes_the_class_ids_is_a_difference_and_nothing_else_is():
    now = classes([{"name": "resin", "codes": [0]}, {"name": "pyrite", "codes": [1, 2]}])
    recorded = now.to_document()
    assert class_map_difference(recorded, now) is None
    same = {**recorded, "classes": [recorded["classes"][0], {**recorded["classes"][1], "codes": [2, 1],
                                                             "name": "Pyrite"}]}
    assert class_map_difference(same, now) is None  # codes are a set, names case aside
    older = {k: v for k, v in recorded.items() if k not in ("mask_encoding", "ignore_codes")}
    assert class_map_difference(older, now) is None  # documents before the keys: codes, as from_document reads
    recoded = {**recorded, "classes": [recorded["classes"][0], {**recorded["classes"][1], "codes": [1]}]}
    assert class_map_difference(recoded, now) == ("class id 1 was 'pyrite' (mask codes [1]) when it trained, "
                                                  "'pyrite' (mask codes [1, 2]) now")
    assert class_map_difference({**recorded, "ignore_index": 254}, now) == \
        "ignore_index was 254 when it trained, 255 now"
    colours = classes([{"name": "resin", "color": [0, 0, 0]}, {"name": "pyrite", "color": [250, 220, 0]}],
                      mask_encoding="colors")
    assert class_map_difference(older, colours) == "mask_encoding was 'codes' when it trained, 'colors' now"
    repainted = {**colours.to_document()}
    repainted["classes"] = [repainted["classes"][0], {**repainted["classes"][1], "color": [255, 0, 0]}]
    assert class_map_difference(repainted, colours) == ("class id 1 was 'pyrite' (colour [255, 0, 0]) when it "
                                                        "trained, 'pyrite' (colour [250, 220, 0]) now")
    assert class_map_difference({"classes": recorded["classes"][:1]}, now).startswith(
        "1 classes (resin) when it trained, 2 now (resin, pyrite)")


def test_class_names_that_differ_only_in_case_are_refused_when_read():
    """``Pyrite`` and ``pyrite`` trained as two classes, then every manifest of them was refused by segment, whose
    mineralogy matches names in any case (densities, background classes): refused with the class map."""
    import pytest

    spec = {"classes": [{"name": "resin"}, {"name": "Pyrite"}, {"name": "pyrite"}]}
    with pytest.raises(ValueError, match=r"'Pyrite' and 'pyrite' \(in any case\) name class ids 1 and 2 \(entries 2 and "
                                         r"3\); every class needs its own name \(mineralogy's densities and background "
                                         r"classes match names in any case\)"):
        ClassMapSettings.model_validate(spec)
    assert len(ClassMapSettings.model_validate({"classes": [{"name": "resin"}, {"name": "Pyrite"}]}).classes) == 2
    # the same check as every class list's (a manifest's, --classes, mineralogy's): a repeat, an empty name
    with pytest.raises(ValueError, match=r"'resin' names class ids 0 and 2 \(entries 1 and 3\)"):
        ClassMapSettings.model_validate({"classes": [{"name": "resin"}, {"name": "pyrite"}, {"name": "resin"}]})
    with pytest.raises(ValueError, match=r"class id 1 \(entry 2 of 2\) has an empty name"):
        ClassMapSettings.model_validate({"classes": [{"name": "resin"}, {"name": " "}]})
