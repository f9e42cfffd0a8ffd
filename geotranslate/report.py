"""A run report: one self-contained HTML page that shows how a training run went.

``geotranslate report RUN_DIR`` (and ``train`` at its end) writes RUN_DIR/report.html with

- the loss curves of metrics.csv (every iteration, with each epoch's mean);
- validation PSNR and SSIM per epoch beside those of the flat image (the target's training
  mean), the bar a translation must clear, and the table of those figures as metrics.csv
  holds them;
- a grid of validation chips (input | translation of the best model | of the last model |
  target; training chips when there is no validation split), drawn by :mod:`geotranslate.render`
  with the translations stretched like their target;
- config.json.

Pictures are PNGs embedded as base64, so the page is one file to mail or archive. Plots use
matplotlib (Agg backend, no display needed).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from geotranslate.chips.meta import SPLITS
from geotranslate.errors import InputError, StorageError
from geotranslate.files import atomic_path, check_file_output, check_not_input

REPORT_NAME = "report.html"
#: validation chips shown by default (rows of the chip grid).
DEFAULT_CHIPS = 6
#: columns of metrics.csv that are not losses.
#: the first columns of metrics.csv: where in training a row was written
POSITION_COLUMNS = ["epoch", "iteration"]
_NOT_LOSSES = (*POSITION_COLUMNS, "lr")


def read_metrics_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """metrics.csv's columns and rows (values as written; empty where not logged)."""
    if not path.is_file():
        raise StorageError(f"{path}: no such file (is this a run directory of train?)")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except OSError as e:
        raise StorageError(f"{path}: unreadable ({e})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: unreadable ({e})") from None
    if columns[:2] != POSITION_COLUMNS:
        raise InputError(f"{path}: not a metrics.csv of train (columns {columns[:3]})")
    for row in rows:
        for key, value in row.items():
            if value:
                try:
                    float(value)
                except (TypeError, ValueError):
                    raise InputError(
                        f"{path}: {key} {value!r} of iteration {row.get('iteration')} is not "
                        "a number") from None
    return columns, rows


def _values(rows: list[dict[str, str]], column: str) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, values) of the rows where ``column`` is logged."""
    kept = [r for r in rows if r.get(column)]
    return (np.array([float(r["iteration"]) for r in kept]),
            np.array([float(r[column]) for r in kept]))


def _png(figure) -> str:
    """A matplotlib figure as a base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(panels: int, columns: int = 2, width: float = 4.2, height: float = 3.0):
    """A figure of ``panels`` axes, ``columns`` a row (unused axes hidden); (figure, axes)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    columns = min(columns, panels)
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows),
                                squeeze=False)
    for ax in axes.ravel()[panels:]:
        ax.set_visible(False)
    return figure, axes.ravel()[:panels]


def loss_plot(columns: list[str], rows: list[dict[str, str]]) -> str | None:
    """Each loss per iteration (thin) with its per-epoch mean (dots), one panel per loss (their
    scales differ by orders of magnitude), as a base64 PNG."""
    losses = [c for c in columns if c not in _NOT_LOSSES and not c.startswith("val_")]
    losses = [c for c in losses if any(r.get(c) for r in rows)]
    if not losses:
        return None
    figure, axes = _figure(len(losses), columns=3)
    for k, (ax, name) in enumerate(zip(axes, losses, strict=True)):
        x, y = _values(rows, name)
        colour = f"C{k % 10}"
        ax.plot(x, y, color=colour, alpha=0.35, linewidth=0.8)
        epochs = np.array([float(r["epoch"]) for r in rows if r.get(name)])
        ends = [(x[epochs == e].max(), y[epochs == e].mean()) for e in np.unique(epochs)]
        ax.plot(*zip(*ends, strict=True), color=colour, marker="o", markersize=3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    figure.suptitle("losses (line: each iteration; dots: the epoch's mean)", fontsize=10)
    figure.tight_layout()
    return _png(figure)


def validation_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r.get("val_psnr")]


def validation_plot(rows: list[dict[str, str]]) -> str | None:
    """Validation PSNR and SSIM per epoch, the model's and the flat image's."""
    val = validation_rows(rows)
    if not val:
        return None
    figure, axes = _figure(2)
    epochs = np.array([float(r["epoch"]) for r in val])
    for ax, (metric, unit) in zip(axes, (("psnr", "dB"), ("ssim", "")), strict=True):
        for prefix, label, style in (("val_", "model", "-o"), ("val_flat_", "flat image", "--")):
            kept = [(e, float(r[prefix + metric])) for e, r in zip(epochs, val, strict=True)
                    if r.get(prefix + metric)]
            if kept:
                ax.plot(*zip(*kept, strict=True), style, label=label, markersize=4)
        ax.set_xlabel("epoch (0: untrained)")
        ax.set_ylabel(f"{metric.upper()} {unit}".strip())
        ax.set_title(f"validation {metric.upper()}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _png(figure)


def _chip_names(data_dir: Path) -> tuple[str, list[str], bool]:
    """(split, chip names, paired): validation chips when there are, else training chips."""
    from geotranslate.data import chip_paths

    for split in reversed(SPLITS):  # validation chips first
        folder_a, folder_b = data_dir / f"{split}_a", data_dir / f"{split}_b"
        if folder_a.is_dir() and chip_paths(folder_a):
            names_a = [p.name for p in chip_paths(folder_a)]
            names_b = {p.name for p in chip_paths(folder_b)} if folder_b.is_dir() else set()
            paired = [n for n in names_a if n in names_b]
            return split, paired or names_a, bool(paired)
    return "", [], False


def chip_grid(run_dir: Path, config: dict, count: int, device: str = "cpu") -> tuple[str, str]:
    """The chip grid as a base64 PNG and a sentence saying what it shows ("" if none)."""
    import torch

    from geotranslate.data import read_chip
    from geotranslate.modelfile import load_model
    from geotranslate.render import Panel, chip_panel, chip_rows, parse_rgb_bands
    from geotranslate.train.run import BEST_DIR

    if count < 1 or not (run_dir / "model.json").exists():
        return "", "no model yet (the run has not finished)" if count >= 1 else ""
    models = {}
    kept = (config.get("keep") or "last")
    best_dir = run_dir / BEST_DIR
    if best_dir.is_dir() and (best_dir / "model.json").exists():
        best = load_model(best_dir, device=device)
        models[f"best (epoch {best.training.get('best_epoch', '?')})"] = best
    if kept != "best" or not models:
        models["last" if kept != "best" else "kept model"] = load_model(run_dir, device=device)
    data_dir = Path(str(config.get("data_dir") or ""))
    split, names, paired = _chip_names(data_dir) if data_dir.is_dir() else ("", [], False)
    if not names:
        return "", f"no chips to show: {data_dir} is gone or empty"
    picked = [names[round(i)] for i in np.linspace(0, len(names) - 1, min(count, len(names)))]
    picked = list(dict.fromkeys(picked))
    rgb = parse_rgb_bands(config.get("rgb_bands"))
    any_model = next(iter(models.values()))
    source, target = any_model.source_domain("a2b"), any_model.target_domain("a2b")

    def panel(title: str, data: np.ndarray, valid: np.ndarray, domain) -> Panel:
        return chip_panel(title, data, valid, domain.band_descriptions,
                          rgb["a" if domain is source else "b"])

    rows = []
    for name in picked:
        a, valid_a = read_chip(data_dir / f"{split}_a" / name)
        row = [panel(name, a, valid_a, source)]
        x = torch.from_numpy(source.normalizer.to_model(a, valid_a)[None]).to(device)
        for label, model in models.items():
            generator = model.generator("a2b").eval()
            with torch.no_grad():
                y = generator(x).float().cpu().numpy()[0]
            row.append(panel(label, model.target_domain("a2b").normalizer.to_data(
                y, target.dtype), valid_a, target))
        if paired:
            b, valid_b = read_chip(data_dir / f"{split}_b" / name)
            row.append(panel("target B", b, valid_b, target))
        rows.append(row)
    image = chip_rows(rows)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    what = (f"{len(rows)} {'validation' if split == 'val' else 'training'} chips of {data_dir}: "
            "input A | " + " | ".join(models) + (" | target B" if paired else "") +
            ("; translations stretched like the target" if paired else ""))
    if kept == "best":
        what += "; the last model is not kept (--keep best)"
    return base64.b64encode(buffer.getvalue()).decode("ascii"), what


def _table(columns: list[str], rows: list[dict[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r.get(c) or '')}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:80em}
table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #bbb;padding:2px 6px;
text-align:right}th{background:#eee}pre{background:#f6f6f6;padding:0.8em;font-size:0.85em}
img{max-width:100%}"""


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 chips: int = DEFAULT_CHIPS, device: str = "cpu") -> Path:
    """Write the HTML report of a run (default RUN_DIR/report.html); returns its path."""
    from geotranslate.device import resolve_device

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StorageError(f"{run_dir}: no such run directory")
    out = Path(out) if out is not None else run_dir / REPORT_NAME
    check_file_output(out)
    metrics_path = run_dir / "metrics.csv"
    config_path = run_dir / "config.json"
    check_not_input(out, [metrics_path, config_path, run_dir / "model.json"])
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise StorageError(f"{config_path}: no such file (is this a run directory of "
                                "train?)") from None
    except OSError as e:
        raise StorageError(f"{config_path}: unreadable ({e})") from None
    except ValueError as e:
        raise InputError(f"{config_path}: unreadable ({e})") from None
    if not isinstance(config, dict):
        raise InputError(f"{config_path}: not a config.json of train")
    columns, rows = read_metrics_csv(metrics_path)
    grid, grid_text = chip_grid(run_dir, config, chips, str(resolve_device(device)))

    val = validation_rows(rows)
    val_columns = POSITION_COLUMNS + [c for c in columns if c.startswith("val_")]
    train_rows = [r for r in rows if not r.get("val_psnr") and not r.get("val_l1")]
    loss_columns = [c for c in columns if not c.startswith("val_")]
    last = train_rows[-1:]
    parts = [f"<h1>geotranslate run {html.escape(run_dir.name)}</h1>",
             f"<p>{html.escape(str(config.get('dataset_type', '?')))} on "
             f"{html.escape(str(config.get('data_dir', '?')))}; "
             f"{len(train_rows)} iterations logged"
             + (f", last at epoch {html.escape(last[0]['epoch'])}" if last else "") + ".</p>"]
    loss_png = loss_plot(columns, rows)
    parts.append("<h2>Losses</h2>")
    parts.append(f'<img alt="losses" src="data:image/png;base64,{loss_png}">' if loss_png
                 else "<p>no training rows yet</p>")
    if last:
        parts.append("<p>last iteration:</p>" + _table(loss_columns, last))
    parts.append("<h2>Validation</h2>")
    if val:
        parts.append(f'<img alt="validation" src="data:image/png;base64,'
                     f'{validation_plot(rows)}">')
        parts.append("<p>Figures in the target's data units, scored as geotranslate evaluate "
                     "scores the validation chips (PSNR and SSIM: data range p98 - p2 of the "
                     "targets; runs of earlier versions logged the model's [-1, 1], range 2); "
                     "val_flat_*: a flat image at the target's training mean, the bar to "
                     "clear.</p>")
        parts.append(_table(val_columns, val))
    else:
        parts.append("<p>no validation split (export-tiles --val-fraction makes one; unpaired "
                     "methods are not validated)</p>")
    parts.append("<h2>Chips</h2>")
    if grid:
        parts.append(f"<p>{html.escape(grid_text)}</p>")
        parts.append(f'<img alt="chips" src="data:image/png;base64,{grid}">')
    else:
        parts.append(f"<p>{html.escape(grid_text or 'not drawn')}</p>")
    parts.append("<h2>Configuration</h2>")
    parts.append(f"<pre>{html.escape(json.dumps(config, indent=2))}</pre>")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>geotranslate run {html.escape(run_dir.name)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
