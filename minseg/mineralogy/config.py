"""The ``mineralogy`` config section: how segmented slides are measured, by ``segment`` as blocks finish and by
``measure`` on existing label maps (the same numbers either way; docs/mineralogy.md defines each)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from minseg.config.base import StrictModel
from minseg.data.config import class_list_problem

DEFAULT_BACKGROUND = ("background", "resin", "epoxy", "pore", "pores")
MAX_PIXEL_SIZE_UM = 1e6
"""A pixel size at or above this (1 m per pixel) is no microscope's or scanner's: a wrong unit or resolution tag."""


class MineralogySettings(StrictModel):
    connectivity: int = Field(8, description="grain and particle connectivity: 4 or 8 neighbours")
    min_grain_px: int = Field(4, ge=1, description="grains and particles smaller than this are noise: counted, "
                              "left out of sizes, liberation and the per-object tables")
    background_classes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BACKGROUND),
        description="class names that are not sample (mounting resin, pores): left out of sample area % and "
                    "weight %, and their contact with minerals is the minerals' free surface")
    densities: dict[str, float] = Field(default_factory=dict, description="g/cm³ by class name for weight % and "
                                        "mass-weighted sizes; added to minseg.mineralogy.DEFAULT_DENSITIES")
    size_fractions: list[float] = Field(
        default_factory=lambda: [20.0, 38.0, 75.0, 150.0, 300.0],
        description="ECD edges of the size fractions liberation is also reported by: µm (pixels on a slide "
                    "without a pixel size), ascending; the default follows the √2-sieve series' usual cuts")
    liberation_classes: list[int] = Field(
        default_factory=lambda: list(range(0, 100, 10)),
        description="lower edges (%) of the partial liberation classes, from 0 ascending; 100 % is its own class")
    tables: bool = Field(True, description="write particles.parquet and grains.parquet (a row per object)")
    plots: bool = Field(True, description="write size_distribution.png, liberation.png and association.png")

    @field_validator("connectivity")
    @classmethod
    def _connectivity(cls, value: int) -> int:
        if value not in (4, 8):
            raise ValueError("must be 4 or 8")
        return value

    @field_validator("densities")
    @classmethod
    def _positive_densities(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {name: density for name, density in value.items() if not 0 < density < 100}
        if bad:
            raise ValueError(f"densities are g/cm³, above 0 and below 100 (osmium: 22.6): {bad}")
        return value

    @field_validator("size_fractions")
    @classmethod
    def _ascending_sizes(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value) or any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError(f"size fractions are ECD edges above 0, strictly ascending: {value}")
        return value

    @field_validator("liberation_classes")
    @classmethod
    def _liberation_edges(cls, value: list[int]) -> list[int]:
        if not value or value[0] != 0 or any(b <= a for a, b in zip(value, value[1:])) or value[-1] >= 100:
            raise ValueError(f"liberation classes are lower edges in %, from 0, strictly ascending, below 100: {value}")
        return value

    @model_validator(mode="after")
    def _distinct_background(self) -> "MineralogySettings":
        if len(set(self.background_classes)) != len(self.background_classes):
            raise ValueError(f"background_classes repeats a name: {self.background_classes}")
        return self

    def check_class_names(self, names: list[str], owner: str = "the ensemble") -> None:
        """``names`` (``owner``'s classes, by id) must be distinct and not empty, and the class names this config
        sets (densities; background classes when set) must be among them; raises ValueError naming the key and
        the known classes."""
        problem = class_list_problem(names)
        if problem:
            raise ValueError(f"the class names of {owner}: {problem}")
        keys = [("mineralogy.densities", list(self.densities))]
        if self.background_classes != list(DEFAULT_BACKGROUND):  # the default names the usual spellings
            keys.append(("mineralogy.background_classes", self.background_classes))
        folded = {name.casefold() for name in names}  # matched in any case, as the measurement does
        for key, given in keys:
            unknown = [name for name in given if name.casefold() not in folded]
            if unknown:
                raise ValueError(f"{key} names {', '.join(map(repr, unknown))}, not a class of {owner} "
                                 f"({', '.join(names)})")
