"""Per-view classifier references for the mfeat quality benchmark, on the same split as SDML.

Each view gets its own classifier trained on that view's train split (inputs standardised with
train statistics). Its class-probability vector serves as the view's embedding, and the mean
cosine mAP over the 30 ordered view pairs is computed exactly as for SDML
(``scalable_xmr.functional.retrieval.mean_average_precision``). This reproduces the issue's
"per-view logistic regression into label space" anchor (0.83). An RBF-kernel SVM shows what a
stronger per-view model reaches. Neither uses the validation split.

    python bench/mfeat_reference.py [--seed 0] [--out DIR]

Needs scikit-learn (installed with MLflow).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import warnings
from pathlib import Path

import numpy as np

from scalable_xmr.data.modality.dataset import open_dataset
from scalable_xmr.data.modality.mfeat import convert_mfeat
from scalable_xmr.functional.retrieval import mean_average_precision


def classifiers() -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    return {
        "logistic regression": lambda: LogisticRegression(max_iter=3000),
        "RBF SVM (C=10, Platt)": lambda: SVC(C=10, probability=True, random_state=0),
    }


def view_probabilities(ds, make) -> tuple[dict[str, np.ndarray], dict[str, float], np.ndarray]:
    """(test probabilities per view, test accuracy per view, test labels)."""
    from sklearn.preprocessing import StandardScaler

    probs, acc, labels = {}, {}, None
    for m in ds.modalities:
        train, test = ds.read_split(m, "train"), ds.read_split(m, "test")
        scaler = StandardScaler().fit(train.features)
        clf = make().fit(scaler.transform(train.features), train.label_indices())
        probs[m] = clf.predict_proba(scaler.transform(test.features))
        labels = test.label_indices()
        acc[m] = float((clf.classes_[probs[m].argmax(1)] == labels).mean())
    return probs, acc, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="split seed (as bench/quality_mfeat.py --seed)")
    p.add_argument("--out", default=None, help="where to keep the converted data (default: a temp dir)")
    args = p.parse_args()
    data = Path(args.out or tempfile.mkdtemp(prefix="mfeat_reference_")) / "mfeat"
    if not (data / "dataset.json").is_file():
        convert_mfeat(str(data), seed=args.seed)
    ds = open_dataset(str(data))
    warnings.filterwarnings("ignore", category=FutureWarning)
    print(f"{'reference':<24}{'mean mAP (30 pairs)':>20}  per-view test accuracy")
    for name, make in classifiers().items():
        probs, acc, labels = view_probabilities(ds, make)
        maps = [mean_average_precision(probs[q], probs[t], labels, labels)
                for q, t in itertools.permutations(ds.modalities, 2)]
        accs = " ".join(f"{m} {a:.3f}" for m, a in acc.items())
        print(f"{name:<24}{np.mean(maps):>20.4f}  {accs}")


if __name__ == "__main__":
    main()
