"""Mask codes -> contiguous class ids, in one lookup."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minseg.data.config import ClassMapSettings, ClassSpec
from minseg.enums import MaskEncoding


@dataclass(frozen=True)
class ClassMap:
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    codes: tuple[tuple[int, ...], ...]
    ignore_index: int = 255
    ignore_codes: tuple[int, ...] = ()
    mask_encoding: MaskEncoding = MaskEncoding.CODES
    ignore_colors: tuple[tuple[int, int, int], ...] = ()
    # which classes' colours the config gives (the others are default_color's, for display): () = not known
    colors_given: tuple[bool, ...] = ()

    @classmethod
    def from_settings(cls, settings: ClassMapSettings) -> "ClassMap":
        specs = settings.classes
        codes = tuple(tuple(s.codes) if s.codes else (i,) for i, s in enumerate(specs))
        return cls(
            names=tuple(s.name for s in specs),
            colors=tuple(tuple(s.color) if s.color else default_color(i) for i, s in enumerate(specs)),
            codes=codes,
            ignore_index=settings.ignore_index,
            ignore_codes=tuple(settings.ignore_codes),
            mask_encoding=settings.mask_encoding,
            ignore_colors=tuple(tuple(c) for c in settings.ignore_colors),
            colors_given=tuple(s.color is not None for s in specs),
        )

    @classmethod
    def from_names(cls, names: list[str]) -> "ClassMap":
        return cls.from_settings(ClassMapSettings(classes=[ClassSpec(name=n) for n in names]))

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def code_to_id(self) -> dict[int, int]:
        table = {code: index for index, codes in enumerate(self.codes) for code in codes}
        table.update({code: self.ignore_index for code in self.ignore_codes})
        return table

    def map_codes(self, codes: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Class-id mask (uint8) and the sorted list of codes the map does not know (colour masks: colours packed
        as ``r << 16 | g << 8 | b``; :meth:`describe_unknown` says them)."""
        table = self.code_to_id()
        if self.mask_encoding is MaskEncoding.COLORS:
            return self._map_colors(codes)
        values = np.unique(codes)
        unknown = sorted(int(v) for v in values if int(v) not in table)
        if codes.dtype == np.uint8:
            lut = np.full(256, self.ignore_index, dtype=np.uint8)
            for code, index in table.items():
                if 0 <= code < 256:
                    lut[code] = index
            return lut[codes], unknown
        out = np.full(codes.shape, self.ignore_index, dtype=np.uint8)
        for code, index in table.items():
            out[codes == code] = index
        return out, unknown

    def _map_colors(self, rgb: np.ndarray) -> tuple[np.ndarray, list[int]]:
        if rgb.ndim != 3:
            from minseg.io.images import DecodeError

            raise DecodeError("mask_encoding 'colors' needs RGB masks")
        packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        out = np.full(packed.shape, self.ignore_index, dtype=np.uint8)
        known = set()
        for index, (r, g, b) in enumerate(self.colors):
            key = (r << 16) | (g << 8) | b
            out[packed == key] = index
            known.add(key)
        known.update((r << 16) | (g << 8) | b for r, g, b in self.ignore_colors)  # left at the ignore index
        unknown = sorted(int(v) for v in np.unique(packed) if int(v) not in known)
        return out, unknown

    def palette_problem(self, codes: np.ndarray, palette: np.ndarray) -> str | None:
        """Why a palette (indexed colour) mask's indices are not this map's class codes, or None. Its indices are
        read as codes (VOC's masks, minseg's label maps: index i is drawn in class i's colour); an editor's
        indexed-colour export numbers its colours as it finds them, so an index is drawn in another class's colour.
        ``codes``: the mask's indices; ``palette``: (N, 3) uint8 (:func:`minseg.io.images.mask_palette`)."""
        if self.mask_encoding is MaskEncoding.COLORS:
            return None
        table = self.code_to_id()
        # only colours the config gives: default_color's display colours say nothing (one is VOC's bus colour)
        owners = {tuple(colour): name for name, colour, given in zip(self.names, self.colors, self.colors_given)
                  if given}
        for index in np.unique(codes).tolist():
            if index >= len(palette) or table.get(index, self.ignore_index) == self.ignore_index:
                continue
            colour, name = tuple(int(c) for c in palette[index]), self.names[table[index]]
            other = owners.get(colour)
            if other is not None and other != name and tuple(self.colors[table[index]]) != colour:
                return (f"palette mask whose colours are other classes': index {index} (read as {name!r}) is drawn "
                        f"in {list(colour)}, the colour of {other!r}. Its indices are not class codes (an editor's "
                        "indexed-colour export?): set mask_encoding: colors to read its colours, or save the mask "
                        "with class codes")
        return None

    def describe_unknown(self, unknown: list[int], limit: int = 10, grey: bool = False) -> str:
        """Why a mask holding ``unknown`` (from :meth:`map_codes`) is refused, in the mask's own terms: codes, or
        RGB colours for colour masks; ``grey``: the whole mask is grey (a class-code mask read for colours), said
        so; white or black among the unknown colours points to ``ignore_colors`` (unlabelled pixels)."""
        if self.mask_encoding is MaskEncoding.COLORS:
            colours = [((u >> 16) & 255, (u >> 8) & 255, u & 255) for u in unknown]
            shown = ", ".join(str(list(c)) for c in colours[:limit])
            known = ", ".join(f"{n} {list(c)}" for n, c in zip(self.names, self.colors))
            note = (" (a grey mask: its pixels have no colour; class codes are read with mask_encoding: codes)"
                    if grey else " (unlabelled pixels? list their colour in ignore_colors)"
                    if {(0, 0, 0), (255, 255, 255)} & set(colours) else "")
            extra = f"; ignored: {[list(c) for c in self.ignore_colors]}" if self.ignore_colors else ""
            return f"mask colours {shown} are no class's colour{note} (classes: {known}{extra})"
        shown = ", ".join(str(u) for u in unknown[:limit])
        return f"mask codes {shown} are not in the class map (known: {sorted(self.code_to_id())})"

    def to_document(self) -> dict:
        return {
            "classes": [
                {"id": i, "name": n, "codes": list(c), "color": list(col)}
                for i, (n, c, col) in enumerate(zip(self.names, self.codes, self.colors))
            ],
            "ignore_index": self.ignore_index,
            "ignore_codes": list(self.ignore_codes),
            "mask_encoding": str(self.mask_encoding),
            **({"ignore_colors": [list(c) for c in self.ignore_colors]} if self.ignore_colors else {}),
        }

    @classmethod
    def from_document(cls, document: dict) -> "ClassMap":
        classes = document["classes"]
        return cls(
            names=tuple(c["name"] for c in classes),
            colors=tuple(tuple(c["color"]) for c in classes),
            codes=tuple(tuple(c["codes"]) for c in classes),
            ignore_index=document["ignore_index"],
            ignore_codes=tuple(document.get("ignore_codes", ())),
            mask_encoding=MaskEncoding(document.get("mask_encoding", "codes")),
            ignore_colors=tuple(tuple(c) for c in document.get("ignore_colors", ())),
        )


def class_map_difference(recorded: dict, current: ClassMap) -> str | None:
    """None when a class map recorded with a checkpoint (``classes.json``, :meth:`ClassMap.to_document`) reads masks
    into the same class ids as ``current``; else the first difference: a class id named otherwise (case aside) or
    given other mask codes (other colours, for colour masks), the class count, the ignore index or encoding. A member
    evaluated or continued under another class map would be scored, or trained on, with its classes swapped."""
    classes = recorded.get("classes") or []
    if len(classes) != current.num_classes:
        return (f"{len(classes)} classes ({', '.join(str(c.get('name')) for c in classes)}) when it trained, "
                f"{current.num_classes} now ({', '.join(current.names)})")
    document = current.to_document()
    for key, default in (("ignore_index", 255), ("mask_encoding", "codes")):  # from_document's defaults
        now, then = document[key], recorded.get(key, default)
        if then != now:
            return f"{key} was {then!r} when it trained, {now!r} now"
    colours = current.mask_encoding is MaskEncoding.COLORS
    for index, (entry, name, codes, colour) in enumerate(zip(classes, current.names, current.codes, current.colors)):
        then = entry.get("color") if colours else entry.get("codes")
        now = list(colour) if colours else list(codes)
        same = then is None or (list(then) == now if colours else sorted(then) == sorted(now))  # codes: a set
        if str(entry.get("name", "")).casefold() != name.casefold() or not same:
            what = "colour" if colours else "mask codes"
            return (f"class id {index} was {entry.get('name')!r} ({what} {then}) when it trained, {name!r} ({what} "
                    f"{now}) now")
    return None


def checkpoint_class_difference(storage, checkpoint: str, current: ClassMap) -> str | None:
    """:func:`class_map_difference` against the class map a checkpoint folder recorded (``classes.json``); None
    when alike, or when it records none (a bare export). ``storage``: a :class:`minseg.io.storage.Storage`."""
    from minseg.io.storage import ObjectNotFoundError, join_uri

    try:
        recorded = storage.read_json(join_uri(checkpoint, "classes.json"))
    except ObjectNotFoundError:
        return None
    return class_map_difference(recorded, current)


def default_color(index: int) -> tuple[int, int, int]:
    palette = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
               (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]
    return palette[index % len(palette)]
