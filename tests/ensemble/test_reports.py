"""The report's tables and figures name one best member: the first in validation rank order that is no baseline."""

from minseg.ensemble.reports import best_member_of, build_tables


def document(ranking):
    def candidate(name, miou):
        return {"key": f"member:{name}", "members": [name], "mode": None, "tpi": 0.1,
                "metrics": {"miou": miou, "mPA": miou, "mRecall": miou, "F1_paper": miou, "mean_f1": miou,
                            "iou": [miou, miou]}}

    return {"rank_key": "miou", "ranking": ranking, "selected": "member:res",
            "classes": {"classes": [{"name": "background"}, {"name": "pyrite"}]},
            "members": {"vgg": {"model": "vgg16_unet"}, "res": {"model": "res_unet"}, "half": {"model": "half_unet"}},
            "candidates": [candidate("vgg", 0.8), candidate("res", 0.7), candidate("half", 0.6)]}


def test_a_baseline_ranked_first_is_not_the_best_member_anywhere():
    """Table 6 skipped the baseline while the confusion matrix and overlays took table 4's first row (the
    baseline): two 'best members' in one report."""
    doc = document(["vgg", "res", "half"])
    assert best_member_of(doc, None)["key"] == "member:res"  # vgg16_unet is a baseline model
    assert best_member_of(doc, ["half"])["key"] == "member:vgg"  # evaluation.baselines names them instead
    tables = build_tables(doc, {}, None)
    assert [row["member"] for row in tables["table4_members"]] == ["vgg", "res", "half"]  # every member, ranked
    assert any("best member (res) IoU" in key for key in tables["table6_per_class"][0])
    assert any("best baseline (vgg) IoU" in key for key in tables["table6_per_class"][0])
