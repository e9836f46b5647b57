"""Figure of the forensics stage: which training images each kernel finds most similar to a
few poisoned test images (paper 001, appendix N), poisoned training images marked."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ntkbench.plots import plt, save_figure
from ntkbench.tables import KERNEL_DISPLAY_NAMES as KERNEL_LABELS

if TYPE_CHECKING:
    from ntkbench.data import DataBundle
    from ntkbench.forensics import ForensicsResult

__all__ = ["plot_forensic_neighbours", "plot_forensics_result"]

POISON_COLOUR = "#d62728"  # red frame: poisoned training image
CLEAN_COLOUR = "#7f7f7f"


def _as_image(x: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) in [0, 1] to something imshow draws: grey (H, W) or RGB (H, W, 3)."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    if x.ndim == 3 and x.shape[0] == 1:
        return x[0], "gray"
    if x.ndim == 3 and x.shape[0] == 3:
        return np.transpose(x, (1, 2, 0)), None
    if x.ndim == 2:
        return x, "gray"
    raise ValueError(f"cannot draw an image of shape {x.shape} (need (1|3, H, W) or (H, W))")


def _draw(ax: plt.Axes, image: np.ndarray, title: str, frame: str, frame_width: float) -> None:
    pixels, cmap = _as_image(image)
    ax.imshow(pixels, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(frame)
        spine.set_linewidth(frame_width)
    ax.set_title(title, fontsize=6, pad=2, color=frame if frame == POISON_COLOUR else "black")


def plot_forensic_neighbours(path: str | Path, test_images: np.ndarray, test_true_y: Sequence[int],
                             train_images: np.ndarray, train_y: np.ndarray,
                             poisoned_train_idx: Sequence[int], top_k: Mapping[str, np.ndarray],
                             min_poisoned: int, target: int,
                             train_clean_y: Mapping[int, int] | None = None,
                             title: str = "") -> None:
    """Grid of the top-k training images per kernel (rows) for each poisoned test image.

    Examples sit side by side; each block starts with the poisoned test image, followed by the
    ``k`` most similar training images in order, red-framed when poisoned. The row label says
    how many of them are poisoned and whether the forensic rule flags the image.
    """
    kernels = list(top_k)
    if not kernels:
        raise ValueError("plot_forensic_neighbours: no kernels to draw")
    n_examples, k = np.asarray(top_k[kernels[0]]).shape
    if len(test_images) != n_examples:
        raise ValueError(f"{len(test_images)} test images but top-k lists for {n_examples}")
    poisoned = set(int(i) for i in poisoned_train_idx)
    train_clean_y = dict(train_clean_y or {})
    block = k + 1
    n_cols = n_examples * block + (n_examples - 1)  # one narrow spacer column between examples
    widths = ([1.0] * block + [0.25]) * (n_examples - 1) + [1.0] * block
    fig, axes = plt.subplots(len(kernels), n_cols, figsize=(0.95 * sum(widths) + 0.8, 1.15 * len(kernels) + 0.9),
                             gridspec_kw={"width_ratios": widths, "wspace": 0.08, "hspace": 0.45},
                             squeeze=False)
    for r, kernel in enumerate(kernels):
        neighbours = np.asarray(top_k[kernel])
        for e in range(n_examples):
            c0 = e * (block + 1)
            if e > 0:
                axes[r, c0 - 1].axis("off")
            votes = sum(int(i) in poisoned for i in neighbours[e])
            flagged = votes >= min_poisoned
            _draw(axes[r, c0], test_images[e], f"test (true {int(test_true_y[e])})\n"
                  f"{votes}/{k} → {'FLAGGED' if flagged else 'not flagged'}", "black", 1.5)
            axes[r, c0].title.set_color(POISON_COLOUR if flagged else "black")
            if e == 0:
                axes[r, c0].set_ylabel(KERNEL_LABELS.get(kernel, kernel), fontsize=9, rotation=0,
                                       ha="right", va="center", labelpad=6)
            for j, idx in enumerate(neighbours[e]):
                idx = int(idx)
                if idx in poisoned:
                    label = f"#{idx} POISON\ny={target} (was {train_clean_y[idx]})" if idx in train_clean_y \
                        else f"#{idx} POISON\ny={target}"
                    _draw(axes[r, c0 + 1 + j], train_images[idx], label, POISON_COLOUR, 2.5)
                else:
                    _draw(axes[r, c0 + 1 + j], train_images[idx], f"#{idx}\ny={int(train_y[idx])}",
                          CLEAN_COLOUR, 0.8)
    fig.suptitle(title or f"Top-{k} most similar training images per kernel (red = poisoned training "
                 f"image; flagged when ≥ {min_poisoned}/{k} are poisoned; target class {target})",
                 fontsize=9)
    save_figure(fig, path)


def plot_forensics_result(path: str | Path, result: "ForensicsResult", bundle: "DataBundle",
                          min_poisoned: int, title: str = "") -> None:
    """Draw :func:`plot_forensic_neighbours` for a :class:`ntkbench.forensics.ForensicsResult`
    (first seed's kernels) with the images of its data bundle."""
    rows = result.example_rows
    poisoned_idx = bundle.extra["poisoned_train_idx"]
    plot_forensic_neighbours(
        path,
        test_images=bundle.extra_splits["poisoned_test"].x.numpy()[rows],
        test_true_y=bundle.extra["poisoned_test_true_y"][rows],
        train_images=bundle.train.x.numpy(),
        train_y=bundle.train.y.numpy(),
        poisoned_train_idx=poisoned_idx,
        top_k=result.example_top_k,
        min_poisoned=min_poisoned,
        target=int(bundle.meta["poison"]["target"]),
        train_clean_y=dict(zip(poisoned_idx.tolist(), bundle.extra["poisoned_train_clean_y"].tolist())),
        title=title,
    )
