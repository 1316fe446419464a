"""Training and evaluation of Tidemark's fraud scoring model.

    fraud.py train    --views V --labels L --model M [--meta JSON]
    fraud.py evaluate --views V --labels L --model M --png P [--title T]

V is the file `tidemark run --views-out` wrote over generated traffic, L the labels
`tidemark generate --labels-out` wrote beside that traffic, M the model file
(config/fraud-model.json).

train: fits a logistic regression (scikit-learn, L2, C=1, lbfgs) on the `model_inputs`
of every `fraud_features` row, labelled fraudulent when its payment id is in L. Inputs are
standardised for the fit and the weights are mapped back to raw inputs, so the engine
computes bias + sum(w * x) on the inputs as it derives them. The alert threshold is the
score that maximises F1 on the training data. The inputs' order is taken from M, which
the engine checks against its own list.

evaluate: reads the engine's `fraud_scores` rows (its scores and alert flags) and reports
precision, recall and F1 of the alerts, average precision, recall per fraud pattern, and
the precision-recall curve (PNG), and lists the weights ordered by effect (|weight| times
the input's standard deviation on the evaluated traffic). The report is Markdown on
standard output.
"""

import argparse
import csv
import datetime
import json
import sys

import numpy as np


def load_labels(path):
    with open(path, newline="") as f:
        return {row["payment_id"]: row["pattern"] for row in csv.DictReader(f)}


def load_views(path):
    """The views of a `--views-out` file, by name."""
    with open(path) as f:
        return json.load(f)["views"]


def check_labels_found(labels, ids, what):
    missing = [p for p in labels if p not in ids]
    if missing:
        sys.exit(f"{len(missing)} labelled payments are not in {what} (first: {missing[0]}): "
                 "the views and the labels come from different traffic")


def x_of(rows, names):
    """The model inputs of fraud_features rows, in the order of `names`."""
    return np.array([[r["model_inputs"][n] for n in names] for r in rows], dtype=float)


def train(args):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, precision_recall_curve
    import sklearn

    with open(args.model) as f:
        names = json.load(f)["inputs"]
    labels = load_labels(args.labels)
    rows = load_views(args.views)["fraud_features"]
    check_labels_found(labels, {r["payment_id"] for r in rows}, "fraud_features")
    x = x_of(rows, names)
    y = np.array([r["payment_id"] in labels for r in rows], dtype=int)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    fit = LogisticRegression(C=1.0, solver="lbfgs", max_iter=10_000).fit((x - mean) / std, y)
    weights = fit.coef_[0] / std
    bias = float(fit.intercept_[0] - np.sum(fit.coef_[0] * mean / std))
    scores = 1.0 / (1.0 + np.exp(-(x @ weights + bias)))
    precision, recall, thresholds = precision_recall_curve(y, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    threshold = float(thresholds[int(np.argmax(f1))])
    meta = json.loads(args.meta) if args.meta else {}
    model = {
        "version": meta.pop("version", "logistic"),
        "bias": bias,
        "inputs": names,
        "weights": [float(w) for w in weights],
        "threshold": threshold,
        "training": {
            **meta,
            "method": f"scikit-learn {sklearn.__version__} LogisticRegression(C=1.0, solver='lbfgs') "
                      "on standardised inputs, weights mapped back to raw inputs; threshold maximises F1 on the training data",
            "payments": int(len(y)),
            "fraudulent": int(y.sum()),
            "training_f1": float(f1_score(y, scores >= threshold)),
            "date": datetime.date.today().isoformat(),
        },
    }
    with open(args.model, "w") as f:
        json.dump(model, f, indent=2)
        f.write("\n")
    print(f"trained on {len(y)} payments ({y.sum()} fraudulent): threshold {threshold:.4f}, "
          f"training F1 {model['training']['training_f1']:.4f}; wrote {args.model}", file=sys.stderr)
    for n, w in sorted(zip(names, weights), key=lambda p: -abs(p[1])):
        print(f"  {n:24s} {w:+.4f}", file=sys.stderr)


def evaluate(args):
    from sklearn.metrics import average_precision_score, precision_recall_curve
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.model) as f:
        model = json.load(f)
    labels = load_labels(args.labels)
    views = load_views(args.views)
    rows = views["fraud_scores"]
    alerts = {r["payment_id"] for r in views["fraud_alerts"]}
    check_labels_found(labels, {r["payment_id"] for r in rows}, "fraud_scores")
    y = np.array([r["payment_id"] in labels for r in rows], dtype=bool)
    scores = np.array([r["score"] for r in rows])
    flagged = np.array([r["alert"] for r in rows], dtype=bool)
    if {r["payment_id"] for r, f in zip(rows, flagged) if f} != alerts:
        sys.exit("fraud_alerts is not the set of fraud_scores rows with alert = true")
    tp = int(np.sum(flagged & y))
    fp = int(np.sum(flagged & ~y))
    fn = int(np.sum(~flagged & y))
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    ap = average_precision_score(y, scores)
    curve_p, curve_r, _ = precision_recall_curve(y, scores)

    by_pattern = {}
    for r, f in zip(rows, flagged):
        pattern = labels.get(r["payment_id"])
        if pattern:
            found, total = by_pattern.get(pattern, (0, 0))
            by_pattern[pattern] = (found + int(f), total + 1)

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    ax.plot(curve_r, curve_p, lw=1.5, label=f"model {model['version']} (AP {ap:.3f})")
    ax.scatter([recall], [precision], color="red", zorder=3, label=f"alert threshold {model['threshold']:.3f}")
    ax.axhline(y.mean(), color="grey", ls=":", lw=1, label=f"fraud share {y.mean():.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(args.title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.png)

    print(f"| payments scored | fraudulent | alerts | precision | recall | F1 | average precision |")
    print(f"|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(rows)} | {int(y.sum())} | {tp + fp} | {precision:.3f} | {recall:.3f} | {f1:.3f} | {ap:.3f} |")
    print()
    print("| pattern | fraudulent payments | alerted | recall |")
    print("|---|---:|---:|---:|")
    for pattern in sorted(by_pattern):
        found, total = by_pattern[pattern]
        print(f"| {pattern} | {total} | {found} | {found / total:.3f} |")
    print()
    print(f"False alerts: {fp} of {int((~y).sum())} honest payments ({fp / max(int((~y).sum()), 1):.4%}).")
    print()
    print(f"The model's weights (bias {model['bias']:+.4f}, threshold {model['threshold']:.4f}), largest effect first:")
    print()
    print("| input | weight |")
    print("|---|---:|")
    spread = dict(zip(model["inputs"], np.std(x_of(views["fraud_features"], model["inputs"]), axis=0)))
    for name, w in sorted(zip(model["inputs"], model["weights"]), key=lambda p: -abs(p[1]) * spread[p[0]]):
        print(f"| `{name}` | {w:+.4f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "evaluate"):
        p = sub.add_parser(name)
        p.add_argument("--views", required=True)
        p.add_argument("--labels", required=True)
        p.add_argument("--model", required=True)
        if name == "train":
            p.add_argument("--meta", help="JSON object kept in the model's training notes")
        else:
            p.add_argument("--png", required=True)
            p.add_argument("--title", default="fraud_scores: precision-recall")
    args = parser.parse_args()
    train(args) if args.command == "train" else evaluate(args)


if __name__ == "__main__":
    main()
