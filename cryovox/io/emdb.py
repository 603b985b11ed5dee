"""EMDB entries: v3 XML headers, local mirror discovery, metadata-CSV sources.

Header facts read by :func:`read_header` (EMDB schema v3, ``<emd emdb_id="EMD-N">``):

- method: ``structure_determination_list/structure_determination/method``
  (singleParticle, subtomogramAveraging, helical, tomography, electronCrystallography);
- resolution (Å): ``final_reconstruction/resolution`` under the method's processing element
  (``singleparticle_processing``, ``subtomogram_averaging_processing``, ``helical_processing``,
  ``tomography_processing``, ``crystallography_processing``), the ``BY AUTHOR`` value first;
- molecular weight (kDa) from ``sample/supramolecule_list``, whole assembly only (see
  :func:`assembly_weight`), falling back to the sum of ``macromolecule_list`` entries times
  their ``number_of_copies``; units MDa, kDa or Da (per-length ``kDa/nm`` of helical
  entries is ignored). When the header has no usable weight the curate pipeline estimates
  it from the volume enclosed at the contour level (:data:`PROTEIN_VOLUME_A3_PER_DA`);
- primary contour level ``map/contour_list/contour[@primary="true"]/level``;
- voxel size ``map/pixel_spacing/x|y|z`` (units written ``Å`` with U+212B ANGSTROM SIGN,
  or U+00C5, ``A``; ``nm`` is converted), map dimensions ``map/dimensions/col|row|sec``
  and the map file name ``map/file``;
- half maps ``interpretation/half_map_list/half_map/file``.

Mirror layouts understood by :func:`discover`: EMDB's own tree
``EMD-N/header/emd-N[-v30].xml`` + ``EMD-N/map/emd_N.map.gz`` (optionally below a
``structures/`` folder), a flat folder of ``emd-N.xml`` + ``emd_N.map[.gz]`` files, or a
folder of maps plus one metadata CSV (see :func:`read_metadata_csv`). Ids may have more
than four digits.
"""

from __future__ import annotations

import csv
import re
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from xml.sax.saxutils import escape

from cryovox.errors import InputError

#: EMDB method names (schema v3 ``method`` enumeration).
METHODS = ("singleParticle", "subtomogramAveraging", "helical", "tomography", "electronCrystallography")
#: Processing element holding ``final_reconstruction/resolution`` for each method.
PROCESSING_ELEMENT = {
    "singleParticle": "singleparticle_processing",
    "subtomogramAveraging": "subtomogram_averaging_processing",
    "helical": "helical_processing",
    "tomography": "tomography_processing",
    "electronCrystallography": "crystallography_processing",
}
#: Protein volume per mass, Å³/Da: partial specific volume 0.73 cm³/g = 0.73e24 Å³ / 6.022e23 Da.
PROTEIN_VOLUME_A3_PER_DA = 1.21

# unit spellings after NFKC normalisation (U+212B ANGSTROM SIGN → U+00C5) and lower-casing
_ANGSTROM_UNITS = {"\u00e5", "a", "angstrom", "angstroms", "ang", ""}
_MASS_UNITS_KDA = {"mda": 1000.0, "kda": 1.0, "da": 1e-3}
_MAP_RE = re.compile(r"^emd[_-](\d+)\.(map|mrc)(\.gz)?$", re.IGNORECASE)
_HEADER_RE = re.compile(r"^emd[_-](\d+)(-v\d+)?\.xml$", re.IGNORECASE)
_MAP_SUFFIXES = (".map", ".mrc", ".map.gz", ".mrc.gz")


@dataclass
class EmdbHeader:
    """Facts from one EMDB v3 header (``None`` where the header has nothing usable).

    entry_id: ``EMD-N``; resolution in Å; mw_kda in kDa with mw_source saying where it came
    from; contour: primary contour level (map units); apix: (x, y, z) voxel size in Å;
    dims: (col, row, sec) = (nx, ny, nz) voxels; map_file / half_maps: file names.
    """

    entry_id: str
    method: str | None = None
    resolution: float | None = None
    mw_kda: float | None = None
    mw_source: str = ""
    contour: float | None = None
    apix: tuple[float, float, float] | None = None
    dims: tuple[int, int, int] | None = None
    map_file: str | None = None
    half_maps: tuple[str, ...] = ()


@dataclass
class MirrorEntry:
    """One entry found in a source: its header (or CSV metadata) and its map.

    Exactly one of ``header_path`` / ``meta`` describes an entry that has metadata; an entry
    with ``map_path`` None has no map, and one with neither ``header_path`` nor ``meta`` has
    no metadata. ``meta`` is an already-parsed :class:`EmdbHeader` (CSV sources).
    """

    entry_id: str
    header_path: Path | None = None
    map_path: Path | None = None
    meta: EmdbHeader | None = None
    half_maps: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def sort_key(self) -> tuple:
        m = re.fullmatch(r"EMD-(\d+)", self.entry_id)
        return (0, int(m.group(1)), "") if m else (1, 0, self.entry_id)


# ----------------------------------------------------------------------------- XML helpers
def _strip_namespaces(root: ET.Element) -> ET.Element:
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    return root


def _text(el: ET.Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    t = el.text.strip()
    return t or None


def _float(el: ET.Element | None) -> float | None:
    t = _text(el)
    if t is None:
        return None
    try:
        return float(t)
    except ValueError:
        return None


def _length_a(el: ET.Element | None) -> float | None:
    """A length element in Å (its ``units`` attribute: Å in any spelling, or nm)."""
    v = _float(el)
    if v is None:
        return None
    unit = unicodedata.normalize("NFKC", el.get("units") or "").strip().lower()
    if unit == "nm":
        return v * 10.0
    if unit in _ANGSTROM_UNITS:
        return v
    return None


def _mass_kda(el: ET.Element | None) -> float | None:
    v = _float(el)
    if v is None or v <= 0:
        return None
    factor = _MASS_UNITS_KDA.get((el.get("units") or "MDa").strip().lower())
    return v * factor if factor is not None else None


def _weight_of(el: ET.Element) -> tuple[float | None, str]:
    """Theoretical weight of a (supra)molecule element in kDa, else the experimental one."""
    mw = el.find("molecular_weight")
    if mw is None:
        return None, ""
    for kind in ("theoretical", "experimental"):
        v = _mass_kda(mw.find(kind))
        if v is not None:
            return v, kind
    return None, ""


def assembly_weight(sample: ET.Element | None) -> tuple[float | None, str]:
    """Molecular weight (kDa) of the whole imaged assembly, and where it came from.

    Rule: the supramolecules whose ``parent`` is 0 (or names no listed supramolecule) are the
    top of the sample tree. A node's weight is its own theoretical weight (else its
    experimental one), else the sum over its children if every child has one. The assembly
    weight is the sum over the top nodes, used only when every top node has a weight.
    Otherwise the macromolecules' weights times ``number_of_copies`` are summed (only when
    all have one). Returns ``(None, "")`` when neither gives a value.
    """
    if sample is None:
        return None, ""
    nodes: dict[str, ET.Element] = {}
    parents: dict[str, str] = {}
    supra = sample.find("supramolecule_list")
    if supra is not None:
        for i, el in enumerate(supra):
            sid = el.get("supramolecule_id") or el.get("id") or f"_{i}"
            nodes[sid] = el
            parents[sid] = _text(el.find("parent")) or "0"
    if nodes:
        children: dict[str, list[str]] = {}
        roots = []
        for sid, parent in parents.items():
            if parent in nodes and parent != sid:
                children.setdefault(parent, []).append(sid)
            else:
                roots.append(sid)

        def weight(sid: str, depth: int = 0) -> tuple[float | None, str]:
            own, kind = _weight_of(nodes[sid])
            if own is not None:
                return own, kind
            kids = children.get(sid, [])
            if not kids or depth > 50:
                return None, ""
            parts = [weight(k, depth + 1) for k in kids]
            if any(p[0] is None for p in parts):
                return None, ""
            return sum(p[0] for p in parts), "sum of components"

        parts = [weight(r) for r in roots]
        if parts and all(p[0] is not None for p in parts):
            kinds = {p[1] for p in parts}
            kind = kinds.pop() if len(kinds) == 1 else "mixed"
            return float(sum(p[0] for p in parts)), f"supramolecule {kind}"
    macro = sample.find("macromolecule_list")
    if macro is not None and len(macro):
        total = 0.0
        for el in macro:
            w, _ = _weight_of(el)
            if w is None:
                return None, ""
            copies = _float(el.find("number_of_copies"))
            total += w * (copies if copies and copies > 0 else 1.0)
        return total, "macromolecules × copies"
    return None, ""


def _normalise_id(raw: str) -> str:
    m = re.search(r"(\d+)", raw or "")
    return f"EMD-{int(m.group(1)):04d}" if m else raw


def parse_header(text: str | bytes, source: str = "header") -> EmdbHeader:
    """Parse the text of an EMDB v3 header (see module docstring). InputError when it is not one."""
    try:
        root = _strip_namespaces(ET.fromstring(text))
    except ET.ParseError as err:
        raise InputError(f"{source}: not well-formed XML ({err})") from None
    if root.tag != "emd":
        raise InputError(f"{source}: root element <{root.tag}> is not an EMDB v3 header (<emd>)")
    entry_id = _normalise_id(root.get("emdb_id") or "")
    h = EmdbHeader(entry_id=entry_id)

    sd = root.find("structure_determination_list/structure_determination")
    if sd is not None:
        h.method = _text(sd.find("method"))
        elements = [PROCESSING_ELEMENT[h.method]] if h.method in PROCESSING_ELEMENT else []
        elements += [e for e in PROCESSING_ELEMENT.values() if e not in elements]
        for name in elements:
            found = []
            for proc in sd.findall(name):
                found += proc.findall("final_reconstruction/resolution")
            if found:
                by_author = [r for r in found if (r.get("res_type") or "").upper() == "BY AUTHOR"]
                for r in by_author + found:
                    h.resolution = _length_a(r)
                    if h.resolution is not None:
                        break
                break

    h.mw_kda, h.mw_source = assembly_weight(root.find("sample"))

    m = root.find("map")
    if m is not None:
        h.map_file = _text(m.find("file"))
        contours = m.findall("contour_list/contour")
        primary = [c for c in contours if (c.get("primary") or "").lower() == "true"]
        for c in primary + contours:
            h.contour = _float(c.find("level"))
            if h.contour is not None:
                break
        ps = m.find("pixel_spacing")
        if ps is not None:
            xyz = tuple(_length_a(ps.find(a)) for a in "xyz")
            if all(v is not None and v > 0 for v in xyz):
                h.apix = xyz  # type: ignore[assignment]
        dims = m.find("dimensions")
        if dims is not None:
            vals = [_float(dims.find(a)) for a in ("col", "row", "sec")]
            if all(v is not None for v in vals):
                h.dims = tuple(int(v) for v in vals)  # type: ignore[assignment]
    h.half_maps = tuple(t for t in (_text(f) for f in root.findall("interpretation/half_map_list/half_map/file"))
                        if t)
    return h


def read_header(path: Path | str) -> EmdbHeader:
    """Read an EMDB v3 header file (InputError when unreadable or not v3)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    return parse_header(data, str(path))


def header_xml(entry_id: str, *, method: str = "singleParticle", resolution: float | None = None,
               mw_kda: float | None = None, contour: float | None = None,
               apix: float | tuple[float, float, float] | None = None,
               dims: tuple[int, int, int] | None = None, map_file: str | None = None,
               half_maps: Iterable[str] = (), components: Iterable[tuple[str, float, int]] = (),
               title: str = "") -> str:
    """A minimal EMDB-v3-shaped header with the facts :func:`parse_header` reads.

    mw_kda is written as the whole assembly's theoretical weight in MDa (supramolecule 1,
    parent 0); ``components`` adds macromolecules as ``(name, kDa per copy, copies)``.
    Lengths are written with U+212B as the unit, as EMDB does. Used by the synthetic mirror
    in ``examples/make_mirror.py`` and by tests.
    """
    num = int(re.search(r"(\d+)", entry_id).group(1))  # type: ignore[union-attr]
    eid = f"EMD-{num:04d}"
    A = "\u212b"
    lines = [f'<?xml version="1.0" encoding="UTF-8"?>',
             f'<emd emdb_id="{eid}" version="3.0.9.0">',
             f"  <admin><title>{escape(title or eid)}</title></admin>",
             "  <sample>", f"    <name>{escape(title or eid)}</name>", "    <supramolecule_list>",
             '      <complex_supramolecule supramolecule_id="1">',
             f"        <name>{escape(title or eid)}</name>", "        <parent>0</parent>"]
    if mw_kda is not None:
        lines += ["        <molecular_weight>",
                  f'          <theoretical units="MDa">{mw_kda / 1000.0:.6g}</theoretical>',
                  "        </molecular_weight>"]
    lines += ["      </complex_supramolecule>", "    </supramolecule_list>"]
    comps = list(components)
    if comps:
        lines.append("    <macromolecule_list>")
        for i, (name, kda, copies) in enumerate(comps, 1):
            lines += [f'      <protein_or_peptide macromolecule_id="{i}">', f"        <name>{escape(name)}</name>",
                      "        <molecular_weight>",
                      f'          <theoretical units="MDa">{kda / 1000.0:.6g}</theoretical>',
                      "        </molecular_weight>", f"        <number_of_copies>{int(copies)}</number_of_copies>",
                      "      </protein_or_peptide>"]
        lines.append("    </macromolecule_list>")
    lines += ["  </sample>", "  <structure_determination_list>",
              '    <structure_determination structure_determination_id="1">',
              f"      <method>{escape(method)}</method>"]
    if resolution is not None:
        proc = PROCESSING_ELEMENT.get(method, "singleparticle_processing")
        lines += [f'      <{proc} image_processing_id="1">', "        <final_reconstruction>",
                  f'          <resolution res_type="BY AUTHOR" units="{A}">{resolution:g}</resolution>',
                  "          <resolution_method>FSC 0.143 CUT-OFF</resolution_method>",
                  "        </final_reconstruction>", f"      </{proc}>"]
    lines += ["    </structure_determination>", "  </structure_determination_list>",
              '  <map format="CCP4">']
    if map_file:
        lines.append(f"    <file>{escape(map_file)}</file>")
    if dims is not None:
        lines.append(f"    <dimensions><col>{dims[0]}</col><row>{dims[1]}</row><sec>{dims[2]}</sec></dimensions>")
    if apix is not None:
        ax, ay, az = (apix, apix, apix) if isinstance(apix, (int, float)) else apix
        lines += ["    <pixel_spacing>", f'      <x units="{A}">{ax:.6g}</x>', f'      <y units="{A}">{ay:.6g}</y>',
                  f'      <z units="{A}">{az:.6g}</z>', "    </pixel_spacing>"]
    if contour is not None:
        lines += ["    <contour_list>", '      <contour primary="true">', f"        <level>{contour:.6g}</level>",
                  "        <source>AUTHOR</source>", "      </contour>", "    </contour_list>"]
    lines.append("  </map>")
    halves = list(half_maps)
    if halves:
        lines += ["  <interpretation>", "    <half_map_list>"]
        lines += [f'      <half_map format="CCP4"><file>{escape(f)}</file></half_map>' for f in halves]
        lines += ["    </half_map_list>", "  </interpretation>"]
    lines.append("</emd>")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- discovery
def _is_map(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_MAP_SUFFIXES)


def _emdb_tree_root(source: Path) -> Path:
    sub = source / "structures"
    if sub.is_dir() and any(p.name.upper().startswith("EMD-") for p in sub.iterdir()):
        return sub
    return source


def _discover_emdb(source: Path) -> list[MirrorEntry]:
    root = _emdb_tree_root(source)
    headers: dict[str, list[Path]] = {}
    maps: dict[str, Path] = {}
    halves: dict[str, list[Path]] = {}
    candidates: list[Path] = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and p.name.upper().startswith("EMD-"):
            for sub in ("header", "map", "other", "."):
                d = p / sub
                if d.is_dir():
                    candidates += sorted(x for x in d.iterdir() if x.is_file())
        elif p.is_file():
            candidates.append(p)
    for p in candidates:
        name = p.name
        hm = _HEADER_RE.match(name)
        mm = _MAP_RE.match(name)
        if hm:
            headers.setdefault(_normalise_id(hm.group(1)), []).append(p)
        elif mm:
            maps.setdefault(_normalise_id(mm.group(1)), p)
        else:
            half = re.match(r"^emd_(\d+)_half_map_\d\.map(\.gz)?$", name, re.IGNORECASE)
            if half:
                halves.setdefault(_normalise_id(half.group(1)), []).append(p)
    entries = []
    for eid in set(headers) | set(maps):
        # prefer a v3 header: the plain name in current releases, ``-v30`` in older ones
        hs = sorted(headers.get(eid, []), key=lambda q: (0 if "-v3" in q.name.lower() else 1, q.name))
        entries.append(MirrorEntry(eid, header_path=_pick_v3(hs), map_path=maps.get(eid),
                                   half_maps=tuple(sorted(halves.get(eid, [])))))
    return sorted(entries, key=lambda e: e.sort_key)


def _pick_v3(paths: list[Path]) -> Path | None:
    """Of several headers of one entry, the first whose root element is ``<emd>`` (v3)."""
    if not paths:
        return None
    for p in paths:
        try:
            with open(p, "rb") as f:
                head = f.read(4096)
            if re.search(rb"<(\w+:)?emd[\s>]", head):
                return p
        except OSError:
            continue
    return paths[0]


# CSV column aliases (lower case) → field
_CSV_COLUMNS = {
    "id": ("id", "entry_id", "emdb_id", "entry"),
    "method": ("method",),
    "resolution": ("resolution", "resolution_a", "resolution_angstrom"),
    "mw_kda": ("mw_kda", "molecular_weight_kda", "molecular_weight", "mw"),
    "contour": ("contour", "contour_level", "level"),
    "apix": ("apix", "pixel_size", "pixel_size_a", "voxel_size"),
    "map": ("map", "map_file", "file", "path"),
}


def read_metadata_csv(path: Path | str) -> list[MirrorEntry]:
    """A metadata CSV source: one row per map.

    Columns (case-insensitive; aliases in parentheses): ``id`` (entry_id, emdb_id),
    ``method``, ``resolution`` (Å), ``mw_kda`` (molecular_weight_kda; kDa), ``contour``
    (contour_level), ``apix`` (pixel_size; Å), and optionally ``map`` (path relative to the
    CSV's folder). Without a ``map`` column the map is ``<id>.mrc|.map[.gz]`` (or
    ``emd_N.map[.gz]`` for EMD-N ids) beside the CSV. Maps in the folder that no row names
    become entries without metadata. Empty cells mean "not known".
    """
    path = Path(path)
    folder = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            fieldnames = [c.strip().lower() for c in (rows[0].keys() if rows else [])]
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the metadata CSV ({err})") from None
    if not rows:
        raise InputError(f"{path}: the metadata CSV has no rows")
    cols = {}
    for key, aliases in _CSV_COLUMNS.items():
        cols[key] = next((a for a in aliases if a in fieldnames), None)
    if cols["id"] is None:
        raise InputError(f"{path}: the metadata CSV needs an 'id' column (has: {', '.join(fieldnames)})")

    def cell(row: dict, key: str) -> str | None:
        name = cols[key]
        if name is None:
            return None
        for k, v in row.items():
            if k is not None and k.strip().lower() == name:
                v = (v or "").strip()
                return v or None
        return None

    def num(row: dict, key: str, line: int) -> float | None:
        v = cell(row, key)
        if v is None:
            return None
        try:
            return float(v)
        except ValueError:
            raise InputError(f"{path}: line {line}: column {cols[key]!r} is not a number: {v!r}") from None

    entries: dict[str, MirrorEntry] = {}
    for line, row in enumerate(rows, start=2):
        raw_id = cell(row, "id")
        if raw_id is None:
            raise InputError(f"{path}: line {line}: empty id")
        eid = _normalise_id(raw_id) if re.fullmatch(r"(?i)(emd[-_]?)?\d+", raw_id) else raw_id
        if eid in entries:
            raise InputError(f"{path}: line {line}: id {raw_id} appears twice")
        apix = num(row, "apix", line)
        meta = EmdbHeader(entry_id=eid, method=cell(row, "method"), resolution=num(row, "resolution", line),
                          mw_kda=num(row, "mw_kda", line), contour=num(row, "contour", line),
                          apix=(apix, apix, apix) if apix else None)
        meta.mw_source = "metadata csv" if meta.mw_kda is not None else ""
        mp = cell(row, "map")
        if mp is not None:
            map_path = (folder / mp) if not Path(mp).is_absolute() else Path(mp)
            map_path = map_path if map_path.is_file() else None
        else:
            map_path = _find_map(folder, raw_id, eid)
        meta.map_file = map_path.name if map_path else mp
        entries[eid] = MirrorEntry(eid, map_path=map_path, meta=meta)
    named = {e.map_path.resolve() for e in entries.values() if e.map_path is not None}
    for p in sorted(folder.iterdir()):
        if _is_map(p) and p.resolve() not in named and not re.search(r"half_map", p.name, re.IGNORECASE):
            stem = re.sub(r"\.(map|mrc)(\.gz)?$", "", p.name, flags=re.IGNORECASE)
            mm = _MAP_RE.match(p.name)
            eid = _normalise_id(mm.group(1)) if mm else stem
            if eid not in entries:
                entries[eid] = MirrorEntry(eid, map_path=p)
    return sorted(entries.values(), key=lambda e: e.sort_key)


def _find_map(folder: Path, raw_id: str, eid: str) -> Path | None:
    stems = [raw_id]
    m = re.fullmatch(r"EMD-(\d+)", eid)
    if m:
        stems += [f"emd_{int(m.group(1))}", f"emd_{m.group(1)}", eid]
    for stem in stems:
        for suf in _MAP_SUFFIXES:
            p = folder / f"{stem}{suf}"
            if p.is_file():
                return p
    return None


def discover(source: Path | str) -> list[MirrorEntry]:
    """All entries of a source (EMDB mirror, flat folder, metadata CSV or folder with one CSV).

    Entries are sorted by id (numerically for EMD-N). Headers without maps and maps
    without headers are returned too (with the missing path None) so they can be reported.
    InputError when the source does not exist or holds nothing recognisable.
    """
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such file or directory")
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return read_metadata_csv(source)
        raise InputError(f"{source}: expected a folder (EMDB mirror) or a metadata .csv file")
    entries = _discover_emdb(source)
    if any(e.header_path is not None for e in entries):
        return entries
    csvs = sorted(source.glob("*.csv"))
    if len(csvs) == 1:
        return read_metadata_csv(csvs[0])
    if len(csvs) > 1:
        raise InputError(f"{source}: several CSV files ({', '.join(c.name for c in csvs)}); "
                         "give the metadata CSV itself as SOURCE")
    if entries:
        return entries  # maps only: every one will be reported as "map without header"
    raise InputError(f"{source}: no EMDB headers (emd-N.xml), maps (emd_N.map.gz) or metadata CSV found")
