"""A minimal PDF writer: text in embedded TrueType fonts, filled rectangles, and RGB images.

Why not matplotlib's PDF backend for the text pages: with embedded TrueType fonts
(``pdf.fonttype = 42``) it lays out every character in Python, about 50 microseconds
each, so a report of 100 owners spent seconds on its text alone.  This writer needs
only what a report page uses, and nothing outside privfl's dependencies (fontTools
and Pillow come with matplotlib):

- fonts: the TrueType files matplotlib ships (DejaVu Sans, Bold, Sans Mono), embedded
  as ``/FontFile2`` subsets (fontTools, glyph ids kept) in ``Type0``/``CIDFontType2``
  fonts with ``Identity-H`` encoding, widths, and a ``ToUnicode`` map so the text can
  be searched, copied and extracted (``pdftotext``);
- text: one ``Tj`` per line, no kerning; :meth:`Font.width` measures a string for
  wrapping;
- images: a PNG decoded with Pillow and stored as a Flate-compressed RGB image.

Coordinates are PDF points (1/72 inch) from the bottom-left corner of the page.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path


def _name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _string(text: str) -> bytes:
    """A PDF literal string (metadata), UTF-16BE with BOM so any character survives."""
    return b"<feff" + text.encode("utf-16-be").hex().encode("ascii") + b">"


def _number(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


class Font:
    """One TrueType font: metrics for layout, the glyphs used, and its embedding."""

    def __init__(self, path: str | Path, resource: str) -> None:
        from fontTools.ttLib import TTFont

        self.path = Path(path)
        self.resource = resource
        self._tt = TTFont(str(self.path), lazy=True)
        self.cmap: dict[int, int] = {}
        order = {name: gid for gid, name in enumerate(self._tt.getGlyphOrder())}
        for code, glyph in (self._tt.getBestCmap() or {}).items():
            self.cmap[code] = order[glyph]
        self.units = self._tt["head"].unitsPerEm
        metrics = self._tt["hmtx"].metrics
        names = self._tt.getGlyphOrder()
        self.advance = [metrics[n][0] for n in names]
        head, hhea = self._tt["head"], self._tt["hhea"]
        self.bbox = [head.xMin, head.yMin, head.xMax, head.yMax]
        self.ascent, self.descent = hhea.ascent, hhea.descent
        os2 = self._tt["OS/2"] if "OS/2" in self._tt else None
        self.cap_height = getattr(os2, "sCapHeight", self.ascent) or self.ascent
        self.postscript = _name(self._tt["name"].getDebugName(6) or self.path.stem)
        self.used: dict[int, int] = {}  # glyph id -> unicode code point

    def glyphs(self, text: str) -> list[int]:
        out = []
        for char in text:
            gid = self.cmap.get(ord(char), 0)
            if gid not in self.used:
                self.used[gid] = ord(char)
            out.append(gid)
        return out

    def width(self, text: str, size: float) -> float:
        """Width of ``text`` at ``size`` points, in points."""
        advance = self.advance
        return sum(advance[self.cmap.get(ord(c), 0)] for c in text) * size / self.units

    def encode(self, text: str) -> bytes:
        return b"<" + "".join(f"{g:04x}" for g in self.glyphs(text)).encode("ascii") + b">"

    def subset_bytes(self) -> bytes:
        """The font file reduced to the glyphs used (glyph ids unchanged, as Identity-H needs)."""
        from fontTools import subset

        options = subset.Options()
        options.retain_gids = True
        options.layout_features = []
        options.hinting = False
        options.notdef_outline = True
        options.name_IDs = ["*"]
        options.drop_tables += ["GPOS", "GSUB", "GDEF", "kern", "DSIG", "FFTM"]
        font = subset.load_font(str(self.path), options)
        subsetter = subset.Subsetter(options)
        subsetter.populate(gids=sorted(set(self.used) | {0}))
        subsetter.subset(font)
        buffer = io.BytesIO()
        font.save(buffer)
        return buffer.getvalue()


@dataclass
class _Page:
    width: float
    height: float
    ops: list[bytes] = field(default_factory=list)
    fonts: set[str] = field(default_factory=set)
    images: set[str] = field(default_factory=set)


class PdfDocument:
    """Pages of text, rectangles and images, written out by :meth:`save`."""

    def __init__(self, fonts: dict[str, str | Path], title: str = "", author: str = "", subject: str = "") -> None:
        self.fonts = {key: Font(path, f"F{i + 1}") for i, (key, path) in enumerate(fonts.items())}
        self.pages: list[_Page] = []
        self.images: list[tuple[str, int, int, bytes]] = []  # (resource, width, height, flate RGB)
        self.info = {"Title": title, "Author": author, "Subject": subject, "Producer": "privfl report"}

    def new_page(self, width: float, height: float) -> _Page:
        page = _Page(width, height)
        self.pages.append(page)
        return page

    @property
    def page(self) -> _Page:
        return self.pages[-1]

    def text(self, x: float, y: float, text: str, font: str, size: float, rgb: tuple[float, float, float]) -> None:
        """``text`` with its baseline starting at (x, y)."""
        f = self.fonts[font]
        self.page.fonts.add(font)
        self.page.ops.append(
            f"BT {_number(rgb[0])} {_number(rgb[1])} {_number(rgb[2])} rg /{f.resource} {_number(size)} Tf "
            f"1 0 0 1 {_number(x)} {_number(y)} Tm ".encode("ascii") + f.encode(text) + b" Tj ET")

    def rect(self, x: float, y: float, w: float, h: float, fill: tuple[float, float, float],
             stroke: tuple[float, float, float] | None = None, line_width: float = 1.0) -> None:
        ops = f"q {_number(fill[0])} {_number(fill[1])} {_number(fill[2])} rg "
        if stroke:
            ops += f"{_number(stroke[0])} {_number(stroke[1])} {_number(stroke[2])} RG {_number(line_width)} w "
        ops += f"{_number(x)} {_number(y)} {_number(w)} {_number(h)} re {'B' if stroke else 'f'} Q"
        self.page.ops.append(ops.encode("ascii"))

    def image(self, png: bytes, x: float, y: float, w: float, h: float) -> None:
        """A PNG picture drawn into the box (x, y, w, h) (bottom-left corner, size)."""
        from PIL import Image

        with Image.open(io.BytesIO(png)) as picture:
            rgb = picture.convert("RGB")
            width, height = rgb.size
            data = zlib.compress(rgb.tobytes(), 6)
        resource = f"Im{len(self.images) + 1}"
        self.images.append((resource, width, height, data))
        self.page.images.add(resource)
        self.page.ops.append(f"q {_number(w)} 0 0 {_number(h)} {_number(x)} {_number(y)} cm /{resource} Do Q"
                             .encode("ascii"))

    # -- output
    def save(self, path: str | Path) -> Path:
        objects: list[bytes | None] = [None]  # object numbers start at 1

        def reserve() -> int:
            objects.append(None)
            return len(objects) - 1

        def put(number: int, body: bytes) -> int:
            objects[number] = body
            return number

        def add(body: bytes) -> int:
            return put(reserve(), body)

        def stream(meta: str, data: bytes, compress: bool = True) -> bytes:
            if compress:
                data = zlib.compress(data, 6)
                meta += " /Filter /FlateDecode"
            return f"<< {meta} /Length {len(data)} >>\nstream\n".encode("ascii") + data + b"\nendstream"

        catalog, pages_root = reserve(), reserve()
        font_refs: dict[str, int] = {}
        used_fonts = {name for page in self.pages for name in page.fonts}
        for key in sorted(used_fonts):
            font = self.fonts[key]
            tag = "PRVFL" + chr(ord("A") + len(font_refs))
            base = f"{tag}+{font.postscript}"
            file_ref = add(stream("", font.subset_bytes()))
            scale = 1000 / font.units
            descriptor = add((
                f"<< /Type /FontDescriptor /FontName /{base} /Flags 32 /FontBBox "
                f"[{' '.join(_number(v * scale) for v in font.bbox)}] /ItalicAngle 0 /Ascent "
                f"{_number(font.ascent * scale)} /Descent {_number(font.descent * scale)} /CapHeight "
                f"{_number(font.cap_height * scale)} /StemV 80 /FontFile2 {file_ref} 0 R >>").encode("ascii"))
            gids = sorted(font.used)
            widths = " ".join(f"{g} [{_number(font.advance[g] * scale)}]" for g in gids)
            cid = add((f"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /{base} /CIDSystemInfo << /Registry (Adobe) "
                       f"/Ordering (Identity) /Supplement 0 >> /FontDescriptor {descriptor} 0 R /W [{widths}] "
                       "/CIDToGIDMap /Identity >>").encode("ascii"))
            to_unicode = add(stream("", _cmap(font.used)))
            font_refs[key] = add((f"<< /Type /Font /Subtype /Type0 /BaseFont /{base} /Encoding /Identity-H "
                                  f"/DescendantFonts [{cid} 0 R] /ToUnicode {to_unicode} 0 R >>").encode("ascii"))
        image_refs = {resource: add(stream(f"/Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace "
                                           "/DeviceRGB /BitsPerComponent 8 /Filter /FlateDecode", data,
                                           compress=False))
                      for resource, w, h, data in self.images}
        page_refs = []
        for page in self.pages:
            content = add(stream("", b"\n".join(page.ops)))
            fonts = " ".join(f"/{self.fonts[k].resource} {font_refs[k]} 0 R" for k in sorted(page.fonts))
            images = " ".join(f"/{r} {image_refs[r]} 0 R" for r in sorted(page.images))
            resources = f"<< /Font << {fonts} >> /XObject << {images} >> /ProcSet [/PDF /Text /ImageC] >>"
            page_refs.append(add((f"<< /Type /Page /Parent {pages_root} 0 R /MediaBox [0 0 {_number(page.width)} "
                                  f"{_number(page.height)}] /Resources {resources} /Contents {content} 0 R >>")
                                 .encode("ascii")))
        put(pages_root, (f"<< /Type /Pages /Kids [{' '.join(f'{r} 0 R' for r in page_refs)}] /Count "
                         f"{len(page_refs)} >>").encode("ascii"))
        put(catalog, f"<< /Type /Catalog /Pages {pages_root} 0 R >>".encode("ascii"))
        now = datetime.now(timezone.utc).strftime("D:%Y%m%d%H%M%SZ")
        info = add(b"<< " + b" ".join(f"/{k} ".encode("ascii") + _string(v) for k, v in self.info.items() if v)
                   + f" /CreationDate ({now}) >>".encode("ascii"))

        out = io.BytesIO()
        out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
        offsets = [0]
        for number in range(1, len(objects)):
            offsets.append(out.tell())
            out.write(f"{number} 0 obj\n".encode("ascii") + objects[number] + b"\nendobj\n")
        xref = out.tell()
        out.write(f"xref\n0 {len(objects)}\n0000000000 65535 f \n".encode("ascii"))
        for offset in offsets[1:]:
            out.write(f"{offset:010d} 00000 n \n".encode("ascii"))
        out.write(f"trailer\n<< /Size {len(objects)} /Root {catalog} 0 R /Info {info} 0 R >>\nstartxref\n{xref}\n"
                  "%%EOF\n".encode("ascii"))
        path = Path(path)
        path.write_bytes(out.getvalue())
        return path


def _cmap(used: dict[int, int]) -> bytes:
    """A ToUnicode CMap: glyph id -> the character it was used for."""
    lines = ["/CIDInit /ProcSet findresource begin", "12 dict begin", "begincmap",
             "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def",
             "/CMapName /Adobe-Identity-UCS def", "/CMapType 2 def", "1 begincodespacerange", "<0000> <FFFF>",
             "endcodespacerange"]
    items = sorted(used.items())
    for start in range(0, len(items), 100):
        chunk = items[start:start + 100]
        lines.append(f"{len(chunk)} beginbfchar")
        for gid, code in chunk:
            lines.append(f"<{gid:04x}> <{chr(code).encode('utf-16-be').hex()}>")
        lines.append("endbfchar")
    lines += ["endcmap", "CMapName currentdict /CMap defineresource pop", "end", "end"]
    return "\n".join(lines).encode("ascii")


__all__ = ["Font", "PdfDocument"]
