"""Unimodal baselines: can one modality alone tell clean rows from low-quality ones?

A text-only classifier (bag of words of question + response) and an image-only one (per-cell mean
colour and palette presence on the 2x2 grid) are fit by L2 logistic regression on a validation
world and scored on evaluation worlds. Both should sit near AUROC 0.5: the demo world makes each
modality look normal on its own. A joint classifier on (word, colour-in-image) agreement features,
fit the same way, shows the features do carry the signal once the two modalities are combined.

    python bench/unimodal.py --fit-world 1000 --eval-worlds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saev_core.demo.build import DemoConfig  # noqa: E402
from saev_core.demo.scenes import COLORS, make_rows, vocabulary  # noqa: E402
from saev_core.scoring.quality import auroc  # noqa: E402

VOCAB = {w: i for i, w in enumerate([*vocabulary(), ":"])}
PALETTE = np.array(list(COLORS.values()), np.float32)


def text_features(rows: list[dict]) -> np.ndarray:
    x = np.zeros((len(rows), len(VOCAB)), np.float32)
    for i, r in enumerate(rows):
        for w in f"{r['question']} {r['chosen']}".split():
            x[i, VOCAB[w]] += 1
    return x


def image_cells(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per 2x2 cell: mean RGB [n, 4, 3] and which palette colours cover > 5% of it [n, 4, 6]."""
    means, present = [], []
    for r in rows:
        a = np.asarray(r["image"], np.float32)
        h = a.shape[0] // 2
        cells = [a[y * h:(y + 1) * h, x * h:(x + 1) * h].reshape(-1, 3) for y in (0, 1) for x in (0, 1)]
        means.append([c.mean(0) / 255 for c in cells])
        near = [np.linalg.norm(c[:, None] - PALETTE[None], axis=-1).argmin(-1) for c in cells]
        dist = [np.linalg.norm(c[:, None] - PALETTE[None], axis=-1).min(-1) for c in cells]
        present.append([[((n == k) & (d < 40)).mean() > 0.05 for k in range(len(PALETTE))] for n, d in zip(near, dist)])
    return np.array(means, np.float32), np.array(present, np.float32)


def image_features(rows: list[dict]) -> np.ndarray:
    means, present = image_cells(rows)
    return np.concatenate([means.reshape(len(rows), -1), present.reshape(len(rows), -1), present.max(1)], axis=1)


def joint_features(rows: list[dict]) -> np.ndarray:
    """Per colour: named in the text, shown in the image, and both (the cross-modal agreement)."""
    t = text_features(rows)[:, [VOCAB[c] for c in COLORS]] > 0
    shown = image_cells(rows)[1].max(1) > 0
    return np.concatenate([t, shown, t & shown, t & ~shown], axis=1).astype(np.float32)


def fit_predict(x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, l2: float = 1e-2) -> np.ndarray:
    """L2 logistic regression (LBFGS) on standardised features; returns P(clean) on x_eval."""
    mu, sd = x_fit.mean(0), x_fit.std(0) + 1e-6
    xf, xe = torch.from_numpy((x_fit - mu) / sd), torch.from_numpy((x_eval - mu) / sd)
    y = torch.from_numpy(y_fit.astype(np.float32))
    w = torch.zeros(xf.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xf @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return torch.sigmoid(xe @ w + b).detach().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fit-world", type=int, default=1000)
    ap.add_argument("--eval-worlds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    cfg = DemoConfig()
    fit = make_rows(cfg.n_samples, args.fit_world, cfg.low_quality_fraction)
    y_fit = np.array([r["is_clean"] for r in fit])
    feats = {"text-only": text_features, "image-only": image_features, "joint (agreement)": joint_features}
    results: dict[str, list[float]] = {k: [] for k in feats}
    for w in args.eval_worlds:
        rows = make_rows(cfg.n_samples, w, cfg.low_quality_fraction)
        y = np.array([r["is_clean"] for r in rows])
        for name, fn in feats.items():
            results[name].append(auroc(fit_predict(fn(fit), y_fit, fn(rows)), y))
    print(f"fit on world {args.fit_world}, evaluated on worlds {args.eval_worlds} ({cfg.n_samples} rows each)")
    print("| classifier | AUROC (mean ± std) | per world |")
    print("| --- | ---: | --- |")
    for name, vals in results.items():
        print(f"| {name} | {statistics.mean(vals):.3f} ± {statistics.pstdev(vals):.3f} | {', '.join(f'{v:.3f}' for v in vals)} |")


if __name__ == "__main__":
    main()
