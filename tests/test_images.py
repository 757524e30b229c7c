"""PNG grids (square, one row per label, observation | samples | original) and the image tasks'
observations built from clean images."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scoresde import guidance, image_tasks
from scoresde.images import grid_of_rows, save_image_grid, save_label_grid, save_task_grid, to_uint8_nhwc


def _filled(n, value, size=4, channels=1):
    return np.full((n, size, size, channels), value, dtype=np.uint8)


def _cell(grid, row, col, size=4, padding=1):
    y, x = padding + row * (size + padding), padding + col * (size + padding)
    return grid[y:y + size, x:x + size]


def test_square_grid_layout(tmp_path):
    save_image_grid(_filled(5, 200), str(tmp_path / "g.png"), padding=1, scale=2)
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    # 3 columns and 2 rows of 4x4 images, 1 pixel apart and around: 11 x 16 pixels, then all x2
    assert grid.shape == (22, 32)
    assert grid[2:10, 2:10].min() == 200 and grid[:2].max() == 0 and grid[12:20, 22:30].max() == 0


def test_label_grid_has_one_row_per_label(tmp_path):
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    images = np.stack([_filled(1, 10 * (k + 1))[0] for k in labels])
    save_label_grid(images, labels, str(tmp_path / "g.png"), padding=1)
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (3 * 5 + 1, 3 * 5 + 1)  # rows 0, 1, 2; the longest row has 3 images
    for row, label in enumerate([0, 1, 2]):
        assert (_cell(grid, row, 0) == 10 * (label + 1)).all()
    assert (_cell(grid, 0, 2) == 10).all() and (_cell(grid, 1, 2) == 0).all()  # row 1 holds only two
    with pytest.raises(ValueError, match="one entry per image"):
        save_label_grid(images, labels[:3], str(tmp_path / "bad.png"))


def test_task_grid_rows_are_observation_samples_original(tmp_path):
    obs, samples, originals = _filled(5, 50), _filled(5, 150), _filled(5, 250)
    save_task_grid(obs, samples, originals, str(tmp_path / "g.png"), columns=3, padding=1)
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (6 * 5 + 1, 3 * 5 + 1)  # two blocks of three rows, 3 columns
    for block, width in ((0, 3), (1, 2)):
        for kind, value in enumerate((50, 150, 250)):
            for col in range(width):
                assert (_cell(grid, 3 * block + kind, col) == value).all()
    assert (_cell(grid, 3, 2) == 0).all()  # the second block has two columns
    with pytest.raises(ValueError, match="one shape"):
        save_task_grid(obs, samples[:4], originals, str(tmp_path / "bad.png"))


def test_grids_refuse_what_is_not_uint8_images():
    with pytest.raises(ValueError, match="uint8"):
        grid_of_rows([np.zeros((2, 4, 4, 1), dtype=np.float32)])
    assert to_uint8_nhwc(torch.tensor([[[[0.0, 1.0], [0.5, 2.0]]]])).tolist() == [[[[0], [255]], [[128], [255]]]]


def test_observations_from_clean_images():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    inpaint = image_tasks.make_observation("inpaint", x, mask="half")
    assert isinstance(inpaint, guidance.Inpainting) and torch.equal(inpaint.y, x)
    shown = image_tasks.observation_image(inpaint)
    assert torch.equal(shown[:, :, :4], x[:, :, :4]) and (shown[:, :, 4:] == 0).all()
    gray = image_tasks.make_observation("colorize", x)
    torch.testing.assert_close(gray.y, x.mean(dim=1, keepdim=True))
    assert torch.equal(image_tasks.observation_image(gray), gray.y.expand(-1, 3, -1, -1))
    low = image_tasks.make_observation("superres", x, factor=4)
    torch.testing.assert_close(low.y, F.avg_pool2d(x, 4))
    assert image_tasks.observation_image(low).shape == x.shape
    noisy = image_tasks.make_observation("inpaint", x, mask="random", mask_fraction=0.3, noise_std=0.1,
                                         generator=torch.Generator().manual_seed(1))
    again = image_tasks.make_observation("inpaint", x, mask="random", mask_fraction=0.3, noise_std=0.1,
                                         generator=torch.Generator().manual_seed(1))
    assert noisy.noise_std == 0.1 and torch.equal(noisy.y, again.y) and torch.equal(noisy.mask, again.mask)
    assert 0.1 < noisy.mask.mean() < 0.5 and 0.05 < (noisy.y - x).std() < 0.15
    box = image_tasks.make_observation("inpaint", x, mask="box", mask_fraction=0.5)
    assert box.mask[0, 0, 2:6, 2:6].sum() == 0 and box.mask.sum() == 3 * (64 - 16)


@pytest.mark.parametrize("task,kwargs,match", [
    ("deblur", {}, "task must be one of"),
    ("inpaint", {"mask": "circle"}, "mask must be one of"),
    ("colorize", {}, "3-channel"),
    ("superres", {"factor": 3}, "factor must be an integer >= 2 that divides"),
    ("inpaint", {"noise_std": -1.0}, "noise_std"),
])
def test_bad_tasks_are_refused(task, kwargs, match):
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=match):
        image_tasks.make_observation(task, x, **kwargs)
