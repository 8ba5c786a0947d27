"""Pictures of predictions: the image beside a bar chart of its top classes, drawn with Pillow alone so that
no plotting library becomes a dependency."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL = 400  # the image is fitted into a PANEL x PANEL square
CHART_WIDTH = 560
BAR_COLOUR = (66, 133, 244)
TOP_COLOUR = (219, 68, 55)
TEXT_COLOUR = (32, 32, 32)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _fit(text: str, font, width: int, draw: ImageDraw.ImageDraw) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def render_topk(rgb: np.ndarray, topk: Sequence[tuple[int, str | None, float]], title: str = "") -> Image.Image:
    """The image (fitted, aspect kept) on the left, one labelled bar per class on the right, best on top."""
    image = Image.fromarray(rgb)
    image.thumbnail((PANEL, PANEL), Image.BILINEAR)  # shrinks only
    if max(image.size) < PANEL // 2:  # blow tiny images up so that they can be seen
        factor = (PANEL // 2) / max(image.size)
        image = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                             Image.NEAREST)
    canvas = Image.new("RGB", (PANEL + CHART_WIDTH + 30, PANEL + 20), "white")
    canvas.paste(image, (10 + (PANEL - image.width) // 2, 10 + (PANEL - image.height) // 2))
    draw = ImageDraw.Draw(canvas)
    small, large = _font(15), _font(18)
    left = PANEL + 20
    draw.text((left, 12), _fit(title, large, CHART_WIDTH, draw), fill=TEXT_COLOUR, font=large)
    row = min(72, (PANEL - 40) // max(len(topk), 1))
    bar_max = CHART_WIDTH - 70
    for rank, (label, name, score) in enumerate(topk):
        top = 45 + rank * row
        caption = f"{rank + 1}. {name if name else f'class {label}'} ({label})"
        draw.text((left, top), _fit(caption, small, CHART_WIDTH, draw), fill=TEXT_COLOUR, font=small)
        bar_top = top + 22
        bar_height = min(22, row - 30)
        width = max(1, round(bar_max * min(max(score, 0.0), 1.0)))
        draw.rectangle((left, bar_top, left + bar_max, bar_top + bar_height), outline=(200, 200, 200))
        colour = TOP_COLOUR if rank == 0 else BAR_COLOUR
        draw.rectangle((left, bar_top, left + width, bar_top + bar_height), fill=colour)
        draw.text((left + bar_max + 6, bar_top + 2), f"{score:.3f}", fill=TEXT_COLOUR, font=small)
    return canvas


def save_topk(path: str | Path, rgb: np.ndarray, topk: Sequence[tuple[int, str | None, float]],
              title: str = "") -> Path:
    """Write ``render_topk`` as a PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_topk(rgb, topk, title).save(path, "PNG")
    return path
