"""Pictures of predictions: the image beside a bar chart of its top classes, drawn with Pillow alone so that
no plotting library becomes a dependency."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL = 400  # the image is fitted into a PANEL x PANEL square
CHART_WIDTH = 560
MAX_BARS = 10  # what fits beside the panel at a readable size; a larger --topk is in the results, not the picture
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


def _panel_image(rgb: np.ndarray) -> Image.Image:
    """Fitted into PANEL x PANEL, aspect kept; tiny images blown up so that they can be seen."""
    image = Image.fromarray(rgb)
    image.thumbnail((PANEL, PANEL), Image.BILINEAR)  # shrinks only
    if max(image.size) < PANEL // 2:
        factor = (PANEL // 2) / max(image.size)
        image = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                             Image.NEAREST)
    return image


def render_panels(panels: Sequence[tuple[np.ndarray, str]], topk: Sequence[tuple[int, str | None, float]],
                  title: str = "") -> Image.Image:
    """Images side by side (each fitted, with a caption under it when one is given), then one labelled bar per
    class on the right, best on top."""
    captioned = any(caption for _, caption in panels)
    height = PANEL + 20 + (24 if captioned else 0)
    canvas = Image.new("RGB", (len(panels) * (PANEL + 10) + CHART_WIDTH + 20, height), "white")
    draw = ImageDraw.Draw(canvas)
    small, large = _font(15), _font(18)
    for i, (rgb, caption) in enumerate(panels):
        image = _panel_image(rgb)
        x0 = 10 + i * (PANEL + 10)
        canvas.paste(image, (x0 + (PANEL - image.width) // 2, 10 + (PANEL - image.height) // 2))
        if caption:
            draw.text((x0, PANEL + 16), _fit(caption, small, PANEL, draw), fill=TEXT_COLOUR, font=small)
    left = len(panels) * (PANEL + 10) + 10
    draw.text((left, 12), _fit(title, large, CHART_WIDTH, draw), fill=TEXT_COLOUR, font=large)
    shown = list(topk[:MAX_BARS])
    if len(topk) > len(shown):
        draw.text((left, PANEL + 16), f"and {len(topk) - len(shown)} more in the results", fill=TEXT_COLOUR,
                  font=small)
    row = min(72, (PANEL - 40) // max(len(shown), 1))
    bar_max = CHART_WIDTH - 70
    for rank, (label, name, score) in enumerate(shown):
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


def render_topk(rgb: np.ndarray, topk: Sequence[tuple[int, str | None, float]], title: str = "") -> Image.Image:
    """The image (fitted, aspect kept) on the left, one labelled bar per class on the right, best on top."""
    return render_panels([(rgb, "")], topk, title)


def save_topk(path: str | Path, rgb: np.ndarray, topk: Sequence[tuple[int, str | None, float]],
              title: str = "") -> Path:
    """Write ``render_topk`` as a PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_topk(rgb, topk, title).save(path, "PNG")
    return path


def _drawing_size(rgb: np.ndarray, box: tuple[float, float, float, float] | None):
    """The photo at most twice the panel's size, and the crop box scaled with it: the heatmap is mapped onto the
    photo in float, so a 144-megapixel photo drawn at full size took 8 GB for a 400-pixel panel."""
    largest = 2 * PANEL
    scale = largest / max(rgb.shape[:2])
    if scale >= 1 or box is None:
        return rgb, box
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR, reducing_gap=2.0))
    return small, tuple(v * scale for v in box)


def save_explanation(path: str | Path, rgb: np.ndarray, explanation, title: str = "") -> Path:
    """The crop with its heatmap, the heatmap mapped back onto the whole photo (``rgb``; outside the crop greyed),
    and the top-k bars, as one PNG. An all-zero map is drawn as the plain crop and said in its caption."""
    from .explain import heatmap_on_photo, overlay_on_photo

    e = explanation
    what = f"{e.method} of {e.target_name or f'class {e.target}'}"
    rgb, box = _drawing_size(rgb, e.crop_box)
    if e.finding:  # an all-zero or flat map: the plain crop, and the finding in words
        panels = [(e.crop, f"{what}: {e.finding}"), (rgb, "the photo")]
    else:
        on_photo = heatmap_on_photo(e.heatmap, box, *rgb.shape[:2])
        panels = [(e.overlay, f"{what}, on the crop the model saw"),
                  (overlay_on_photo(rgb, on_photo), "mapped back onto the photo")]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_panels(panels, e.topk, title).save(path, "PNG")
    return path


#: Up to this many classes the confusion matrix itself is drawn; beyond it, per-class accuracy reads better.
CONFUSION_MAX_CLASSES = 40


def render_confusion(matrix: np.ndarray, class_names: Sequence[str]) -> Image.Image:
    """Rows true, columns predicted; each row shaded by its share of that class's images, counts written in."""
    n = len(class_names)
    cell = max(18, min(48, 900 // max(n, 1)))
    margin = 190
    canvas = Image.new("RGB", (margin + n * cell + 20, margin + n * cell + 40), "white")
    draw = ImageDraw.Draw(canvas)
    font, small = _font(14), _font(max(9, min(14, cell // 2)))
    draw.text((margin, 10), "confusion matrix (rows: true class, columns: predicted)", fill=TEXT_COLOUR, font=font)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, np.maximum(totals, 1))
    for i in range(n):
        label = _fit(class_names[i], small, margin - 15, draw)
        draw.text((8, margin + i * cell + (cell - 12) // 2), label, fill=TEXT_COLOUR, font=small)
        for j in range(n):
            shade = int(255 - 200 * shares[i, j])
            colour = (shade, shade, 255) if i != j else (shade, 255, shade)
            box = (margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1, margin + (i + 1) * cell - 1)
            draw.rectangle(box, fill=colour, outline=(225, 225, 225))
            if matrix[i, j]:
                draw.text((box[0] + 3, box[1] + (cell - 12) // 2), str(int(matrix[i, j])), fill=TEXT_COLOUR,
                          font=small)
    for j in range(n):  # column names, written vertically
        label = Image.new("RGB", (margin - 40, cell), "white")
        ImageDraw.Draw(label).text((2, (cell - 12) // 2), _fit(class_names[j], small, margin - 45, draw),
                                   fill=TEXT_COLOUR, font=small)
        canvas.paste(label.rotate(90, expand=True), (margin + j * cell, 35))
    return canvas


def render_per_class(accuracy: Sequence[float | None], counts: Sequence[int], class_names: Sequence[str],
                     top1: float, worst: int = 20) -> Image.Image:
    """Per-class accuracy sorted from worst to best as a filled curve, the overall top-1 as a line, and the
    worst classes named: at 1000 classes this shows the spread and the failures a confusion matrix hides."""
    scored = sorted((a, i) for i, a in enumerate(accuracy) if a is not None)
    width, height, left, top, plot_w, plot_h = 1280, 640, 60, 50, 720, 520
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font, small = _font(16), _font(13)
    draw.text((left, 14), f"per-class top-1 accuracy, {len(scored)} classes with images, sorted "
              f"(overall {top1:.2f}%)", fill=TEXT_COLOUR, font=font)
    draw.rectangle((left, top, left + plot_w, top + plot_h), outline=(160, 160, 160))
    for pct in range(0, 101, 20):
        y = top + plot_h - pct * plot_h / 100
        draw.line((left, y, left + plot_w, y), fill=(230, 230, 230))
        draw.text((left - 40, y - 8), f"{pct}%", fill=TEXT_COLOUR, font=small)
    if scored:
        step = plot_w / len(scored)
        for rank, (value, _) in enumerate(scored):
            x0 = left + rank * step
            y = top + plot_h - value * plot_h / 100
            draw.rectangle((x0, y, max(x0 + step - 1, x0), top + plot_h), fill=BAR_COLOUR)
    y_mean = top + plot_h - top1 * plot_h / 100
    draw.line((left, y_mean, left + plot_w, y_mean), fill=TOP_COLOUR, width=2)
    draw.text((left + 6, y_mean - 18), f"top-1 {top1:.2f}%", fill=TOP_COLOUR, font=small)
    draw.text((left, top + plot_h + 8), "classes, worst to best", fill=TEXT_COLOUR, font=small)
    list_left = left + plot_w + 30
    draw.text((list_left, top), f"worst {min(worst, len(scored))} classes (accuracy, images)", fill=TEXT_COLOUR,
              font=font)
    for row, (value, i) in enumerate(scored[:worst]):
        line = f"{value:5.1f}%  {counts[i]:>4}  {class_names[i]}"
        draw.text((list_left, top + 30 + row * 24), _fit(line, small, width - list_left - 10, draw),
                  fill=TEXT_COLOUR, font=small)
    return canvas


def save_eval_plot(path: str | Path, matrix: np.ndarray, class_names: Sequence[str],
                   accuracy: Sequence[float | None], counts: Sequence[int], top1: float) -> Path:
    """The confusion matrix for a few classes, per-class accuracy for many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(class_names) <= CONFUSION_MAX_CLASSES:
        image = render_confusion(matrix, class_names)
    else:
        image = render_per_class(accuracy, counts, class_names, top1)
    image.save(path, "PNG")
    return path


def _axis(values: Sequence[float], limits: tuple[float, float] | None = None) -> tuple[float, float]:
    """The y axis for these values: 5 % of margin each side (a flat series gets some room too), then clamped to
    ``limits`` (an accuracy never runs past 100 %)."""
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 if high > low else max(abs(low) * 0.05, 0.5)
    low, high = low - pad, high + pad
    if limits is not None:
        low, high = max(low, limits[0]), min(high, limits[1])
    return low, high


def _line_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], series: dict[str, list[tuple[float, float]]],
                title: str, colours: Sequence[tuple[int, int, int]], steps: tuple[int, int], log_y: bool = False,
                limits: tuple[float, float] | None = None) -> None:
    """One plot: a frame, y ticks, a legend beside the title, and a polyline per series of (step, y) points.
    ``steps`` is the step axis shared by every panel: the first and last step the run logged, never beyond; a
    one-step run puts its point in the middle. Text is placed so that no two labels overlap."""
    left, top, right, bottom = box
    font = _font(13)
    draw.text((left, top - 20), title, fill=TEXT_COLOUR, font=font)
    points = [p for values in series.values() for p in values]
    if not points:
        draw.rectangle(box, outline=(160, 160, 160))
        draw.text((left + 10, top + 10), "no data yet", fill=TEXT_COLOUR, font=font)
        return
    if len(series) > 1:  # the legend, right-aligned on the title's line: it never covers a curve or a tick
        x = right
        for name, colour in reversed(list(zip(series, colours, strict=False))):
            x -= draw.textlength(name, font=font)
            draw.text((x, top - 20), name, fill=colour, font=font)
            x -= 16
            draw.rectangle((x, top - 15, x + 10, top - 7), fill=colour)
            x -= 12

    def to_y(value: float) -> float:
        return math.log10(max(value, 1e-12)) if log_y else value

    y0, y1 = _axis([to_y(p[1]) for p in points], limits)
    for k in range(5):
        value = y0 + (y1 - y0) * k / 4
        y = bottom - (bottom - top) * k / 4
        draw.line((left, y, right, y), fill=(235, 235, 235))
        label = f"{10 ** value:.1e}" if log_y else f"{value:.3g}"
        draw.text((left - 6 - draw.textlength(label, font=font), y - 8), label, fill=TEXT_COLOUR, font=font)
    draw.rectangle(box, outline=(160, 160, 160))  # over the grid lines
    x0, x1 = steps
    if x1 > x0:
        draw.text((left, bottom + 4), f"step {x0:g}", fill=TEXT_COLOUR, font=font)
        last = f"step {x1:g}"
        draw.text((right - draw.textlength(last, font=font), bottom + 4), last, fill=TEXT_COLOUR, font=font)
    else:
        only = f"step {x0:g}"
        draw.text(((left + right - draw.textlength(only, font=font)) / 2, bottom + 4), only, fill=TEXT_COLOUR,
                  font=font)

    def to_x(step: float) -> float:
        return left + (right - left) * ((step - x0) / (x1 - x0) if x1 > x0 else 0.5)

    for values, colour in zip(series.values(), colours, strict=False):
        scaled = [(to_x(x), bottom - (bottom - top) * (to_y(y) - y0) / (y1 - y0)) for x, y in values]
        if len(scaled) > 1:
            draw.line(scaled, fill=colour, width=2)
        for x, y in scaled if len(scaled) < 60 else []:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)


def save_curves(path: str | Path, records: Sequence[dict], title: str = "") -> Path:
    """Training curves from log.jsonl records: loss, learning rate and validation accuracy against steps, all three
    over the same steps (those the log holds)."""
    canvas = Image.new("RGB", (1500, 480), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((70, 10), title, fill=TEXT_COLOUR, font=_font(16))
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_top1" in r]
    logged = [r["step"] for r in train + val] or [0]
    steps = (min(logged), max(logged))
    _line_panel(draw, (70, 70, 480, 420), {"loss": [(r["step"], r["loss"]) for r in train]}, "training loss",
                [BAR_COLOUR], steps)
    _line_panel(draw, (570, 70, 980, 420), {"lr": [(r["step"], r["lr"]) for r in train]}, "learning rate",
                [BAR_COLOUR], steps, log_y=True)
    _line_panel(draw, (1070, 70, 1480, 420), {"top-1": [(r["step"], r["val_top1"]) for r in val],
                                              "top-5": [(r["step"], r["val_top5"]) for r in val]},
                "validation accuracy (%)", [TOP_COLOUR, BAR_COLOUR], steps, limits=(0.0, 100.0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, "PNG")
    return path
