"""Images out: ``uint8`` conversion and PNG grids (square, one row per class label, or rows of
observation | samples | original for the image tasks of ``scoresde.image_tasks``).

All functions take images as ``uint8 [B, H, W, C]`` arrays (the paper's ``.npz`` layout; see
:func:`to_uint8_nhwc`) and write grids with ``padding`` black pixels between and around the images.
"""
import math
import os
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """Images in ``[0, 1]`` ``[B, C, H, W]`` -> ``uint8 [B, H, W, C]`` (the paper's ``.npz`` layout)."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _check_images(images: np.ndarray, what: str = "images") -> None:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8:
        got = f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{what} must be a uint8 [B, H, W, C] array, got {got}")


def grid_of_rows(rows: Sequence[np.ndarray], padding: int = 2) -> np.ndarray:
    """One ``uint8 [H', W', C]`` canvas with ``rows[r]`` (``uint8 [n_r, H, W, C]``, rows may differ in
    length, even be empty) laid out left to right on row ``r``."""
    if not rows:
        raise ValueError("a grid needs at least one row")
    for row in rows:
        _check_images(row, "every row")
    h, w, c = rows[0].shape[1:]
    if any(row.shape[1:] != (h, w, c) for row in rows):
        raise ValueError(f"all images of a grid must have one shape, got {sorted({r.shape[1:] for r in rows})}")
    ncol = max(1, max(len(row) for row in rows))
    grid = np.zeros((len(rows) * (h + padding) + padding, ncol * (w + padding) + padding, c), dtype=np.uint8)
    for r, row in enumerate(rows):
        for q, image in enumerate(row):
            y, x = padding + r * (h + padding), padding + q * (w + padding)
            grid[y:y + h, x:x + w] = image
    return grid


def save_grid(grid: np.ndarray, path: str, scale: int = 1) -> str:
    """Write a ``uint8 [H, W, C]`` canvas as a PNG, enlarged ``scale`` times (nearest neighbour, so small
    images stay legible); returns ``path``."""
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path


def legible_scale(images: np.ndarray, target: int = 64) -> int:
    """The integer enlargement that shows images of side ``H`` at about ``target`` pixels."""
    return max(1, target // images.shape[1])


def save_image_grid(images: np.ndarray, path: str, padding: int = 2, scale: int = 1) -> None:
    """Write ``uint8 [B, H, W, C]`` images as one PNG grid of ``ceil(sqrt(B))`` columns, ``padding``
    black pixels apart; the whole grid enlarged ``scale`` times."""
    _check_images(images)
    ncol = int(math.ceil(math.sqrt(images.shape[0])))
    rows = [images[i:i + ncol] for i in range(0, images.shape[0], ncol)]
    save_grid(grid_of_rows(rows, padding), path, scale)


def save_label_grid(images: np.ndarray, labels: Sequence[int], path: str, padding: int = 2, scale: int = 1,
                    classes: Optional[Sequence[int]] = None) -> None:
    """One row per class: row ``k`` holds, in order, the images whose label is ``classes[k]`` (default: the
    labels present, sorted). E.g. samples drawn for labels ``0..9`` cyclically give rows 0 to 9."""
    _check_images(images)
    labels = np.asarray(labels)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must have one entry per image ({images.shape[0]}), got shape {labels.shape}")
    classes = sorted(set(labels.tolist())) if classes is None else list(classes)
    save_grid(grid_of_rows([images[labels == k] for k in classes], padding), path, scale)


def save_task_grid(observations: np.ndarray, samples: np.ndarray, originals: np.ndarray, path: str,
                   columns: int = 16, padding: int = 2, scale: int = 1) -> None:
    """Rows of observation | samples | original: for each block of up to ``columns`` images, a row of the
    observations, a row of the samples drawn from them and a row of the original images, blocks stacked
    top to bottom. All three are ``uint8 [B, H, W, C]`` of one shape."""
    for name, images in (("observations", observations), ("samples", samples), ("originals", originals)):
        _check_images(images, name)
    if not observations.shape == samples.shape == originals.shape:
        raise ValueError(f"observations, samples and originals must have one shape, got {observations.shape}, "
                         f"{samples.shape} and {originals.shape}")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns!r}")
    rows = []
    for i in range(0, samples.shape[0], columns):
        rows += [observations[i:i + columns], samples[i:i + columns], originals[i:i + columns]]
    save_grid(grid_of_rows(rows, padding), path, scale)


__all__ = ["to_uint8_nhwc", "grid_of_rows", "save_grid", "legible_scale", "save_image_grid", "save_label_grid",
           "save_task_grid"]
