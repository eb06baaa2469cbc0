"""Evaluation of an exported iteration: metrics per tag and the pictures that explain them.

Metrics are computed from what ONNX Runtime answers on the test pictures, preprocessed by the
serving code, so they describe the model as it will be served (visionpipe.metrics holds the
formulas; the Function app reuses them).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from visionpipe.metrics import (
    CROSS_VALIDATION_RUNS,
    confusion_matrix,
    metrics_at_threshold,
    pr_curve,
    predictions_document,
    with_spread,
)


def evaluate(
    labels: np.ndarray,
    probabilities: np.ndarray,
    tag_ids: Sequence[str],
    tag_names: Sequence[str],
    samples: Sequence[tuple[str, str]],
    train_images: int,
    threshold: float = 0.5,
    validation_images: int = 0,
    cross_validation: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, metrics.json document)``; ``samples`` are ``(imageId, sha256)`` per row of
    the test split, the only images reported on. ``cross_validation`` (small projects) adds the
    fold-to-fold standard deviations (visionpipe.metrics.with_spread)."""
    metrics = metrics_at_threshold(labels, probabilities, tag_ids, tag_names, threshold,
                                   train_images=train_images)
    metrics["validationImages"] = int(validation_images)
    metrics["split"] = "test"
    metrics = with_spread(metrics, cross_validation, threshold)
    rows = [
        (image_id, sha, [t for t, y in zip(tag_ids, label_row, strict=True) if y > 0.5], probs)
        for (image_id, sha), label_row, probs in zip(samples, labels, probabilities, strict=True)
    ]
    document = dict(metrics)
    document["predictions"] = predictions_document(tag_ids, tag_names, rows)
    if cross_validation is not None:
        document[CROSS_VALIDATION_RUNS] = cross_validation
    return metrics, document


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def pr_curve_png(labels: np.ndarray, probabilities: np.ndarray, metrics: dict[str, Any]) -> bytes:
    """One precision-recall curve per tag, AP in the legend, the 0.5 operating point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for j, tag in enumerate(metrics["perTag"]):
        precision, recall, _ = pr_curve(labels[:, j], probabilities[:, j])
        if recall.size:
            (line,) = ax.step(
                np.r_[0.0, recall], np.r_[precision[0], precision], where="post",
                label=f"{tag['name']} (AP {tag['averagePrecision']:.2f}, n={tag['count']})",
            )
            ax.plot(tag["recall"], tag["precision"], "o", color=line.get_color())
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Precision-recall per tag, test split of {len(labels)} images "
                 f"(dots: threshold {metrics['threshold']:.2f})")
    ax.legend(loc="lower left", fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_png(
    labels: np.ndarray, probabilities: np.ndarray, tag_names: Sequence[str], multilabel: bool,
    threshold: float = 0.5,
) -> bytes:
    """Multiclass: actual vs predicted (argmax). Multilabel: per tag TP/FN/FP/TN at threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(tag_names)
    if multilabel:
        predicted = probabilities >= threshold
        actual = labels > 0.5
        matrix = np.stack([
            (predicted & actual).sum(0), (~predicted & actual).sum(0),
            (predicted & ~actual).sum(0), (~predicted & ~actual).sum(0),
        ], axis=1)
        columns, rows, title = ["TP", "FN", "FP", "TN"], list(tag_names), "Per-tag outcomes"
    else:
        matrix = confusion_matrix(labels.argmax(1), probabilities.argmax(1), n)
        columns, rows, title = list(tag_names), list(tag_names), "Confusion matrix (argmax)"
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(columns), 1.2 + 0.6 * len(rows)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    if not multilabel:
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
    peak = matrix.max() if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(int(value)), ha="center", va="center",
                color="white" if peak and value > peak / 2 else "black")
    ax.set_title(f"{title}, test split of {len(labels)} images")
    return _png(fig)
