"""Benchmark of ``pairseg fill`` against ITK contour interpolation (Slicer's *Fill between slices*).

Protocol (issue 20): for each case of the shared CHAOS MR set and each organ, the expert label is
kept on every k-th slice of the organ's own extent (first and last slice included), k the number
of slices nearest to the requested spacing (15, 30, 45 mm between annotated slices); the organs'
kept slices together make the sparse label of the volume. Then, on the same sparse label,

- ITK ``MorphologicalContourInterpolator`` (``mci``), and
- ``pairseg fill``'s network (``pairwise``) and fusion of both (``fusion``), from one training per
  (case, spacing, base) run, for ``--base none`` and for the shipped model's weights with a new head
  (the organs count as unknown; the shipped model was trained on every CHAOS case but case_002, so
  only case_002 is unseen by that encoder),

are scored per organ: Dice on the unannotated slices inside the organ's extent, and Dice on the whole
extent (annotated slices included), with the seconds per volume. Results: JSON lines per (case,
spacing, base, method) in ``--out``; ``--plot FILES --png P`` prints the tables and draws Dice vs mm.

    nice -n 19 .venv/bin/python benchmarks/fill.py --cases case_002 --mm 15 30 45 --budget-s 60 \\
        --bases none shipped --out benchmarks/results/fill.jsonl
    .venv/bin/python benchmarks/fill.py --plot benchmarks/results/fill.jsonl --png benchmarks/fill_dice_vs_mm.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pairseg.fill import combine, fill_problem, learn, mci_fill, network_probabilities  # noqa: E402
from pairseg.io.read import read_label_volume, read_volume  # noqa: E402
from pairseg.metrics import dice  # noqa: E402
from pairseg.orientation import Orientation  # noqa: E402

SHIPPED = ROOT / "Resources" / "Models" / "chaos-mr-t2-c2fcn.pairseg"


def sparse_label(full: np.ndarray, num_classes: int, every: int) -> np.ndarray:
    """Keep each class on every ``every``-th slice of its own extent, first and last included."""
    out = np.zeros_like(full)
    for k in range(1, num_classes + 1):
        rows = np.flatnonzero((full == k).reshape(len(full), -1).any(axis=1))
        if rows.size == 0:
            continue
        keep = sorted(set(range(int(rows[0]), int(rows[-1]) + 1, every)) | {int(rows[-1])})
        for z in keep:
            out[z][full[z] == k] = k
    return out


def score(pred: np.ndarray, full: np.ndarray, annotated: np.ndarray, names) -> dict:
    """Per class: Dice on the unannotated slices inside the class's true extent, and on the extent."""
    out = {}
    for k, name in enumerate(names, 1):
        rows = np.flatnonzero((full == k).reshape(len(full), -1).any(axis=1))
        extent = np.zeros(len(full), bool)
        extent[rows[0]:rows[-1] + 1] = True
        unannotated = extent & ~annotated[:, k - 1]
        out[name] = {"unannotated": dice(pred[unannotated] == k, full[unannotated] == k) * 100,
                     "extent": dice(pred[extent] == k, full[extent] == k) * 100,
                     "unannotated_slices": int(unannotated.sum()), "extent_slices": int(extent.sum())}
    return out


def run(args) -> None:
    data = Path(args.data)
    spec = json.loads((data / "dataset.json").read_text())
    names = [spec["labels"][str(v)] for v in range(1, len(spec["labels"]))]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tick = time.monotonic()
    import itk  # ITK loads its modules lazily: the first use pays for the import, kept out of the timings

    itk.MorphologicalContourInterpolator  # noqa: B018
    print(f"itk import: {time.monotonic() - tick:.1f} s (not counted below)", flush=True)
    for case in args.cases:
        image = read_volume(data / f"{case}_image.nii.gz")
        label_volume, _ = read_label_volume(data / f"{case}_label.nii.gz", names, reference=image)
        orientation = Orientation.of(image.direction)
        full_canonical = np.ascontiguousarray(orientation.apply(label_volume.array))
        slice_mm = orientation.spacing_zyx(image.spacing)[0]
        for mm in args.mm:
            every = max(1, int(round(mm / slice_mm)))
            sparse = label_volume.__class__(orientation.invert(sparse_label(full_canonical, len(names), every)),
                                            label_volume.spacing, label_volume.origin, label_volume.direction)
            problem = fill_problem(image, sparse, names, f"{case} sparse")
            common = {"case": case, "mm": mm, "every_slices": every, "slice_mm": round(slice_mm, 3),
                      "budget_s": args.budget_s, "annotated_slices": [int(problem.annotated[:, k].sum())
                                                                      for k in range(len(names))]}
            tick = time.monotonic()
            mci = mci_fill(problem.label, problem.spacing_zyx)
            mci_s = time.monotonic() - tick
            record = {**common, "method": "mci", "base": None, "seconds": round(mci_s, 2),
                      "dice": score(combine(problem, "mci", None, mci), full_canonical, problem.annotated, names)}
            _write(out, record)
            for base in args.bases:
                tick = time.monotonic()
                saved = Path(args.from_probabilities or args.save_probabilities or ".") / f"{case}_{mm:g}mm_{base}.npz"
                if args.from_probabilities:  # rescore a saved run: same sparse label, no training
                    stored = np.load(saved)
                    if not np.array_equal(stored["sparse"], problem.label):
                        raise SystemExit(f"{saved}: its sparse label is not this run's")
                    probs, steps, train_s = stored["probabilities"].astype(np.float32), int(stored["steps"]), \
                        float(stored["train_seconds"])
                else:
                    model, rec, train_s = learn(problem, base=str(SHIPPED) if base.startswith("shipped") else None,
                                                modality="MR", budget_s=args.budget_s, device="cpu",
                                                size=args.size, seed=args.seed,
                                                freeze_encoder=base == "shipped-frozen")
                    probs, steps = network_probabilities(model, problem, rec, "cpu"), rec[2].step
                net_s = time.monotonic() - tick
                if args.save_probabilities:
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(saved, probabilities=probs.astype(np.float16), mci=mci, sparse=problem.label,
                                        steps=steps, train_seconds=train_s)
                variants = [("pairwise", None, None)]
                for w in args.fusion_weights:
                    variants.append(("fusion" if w == 0.5 else f"fusion@{w:g}", w, None))
                    variants += [(f"fusion@{w:g}~{r:g}mm", w, r) for r in args.fusion_ramps]
                for method, weight, ramp in variants:
                    tick = time.monotonic()
                    pred = combine(problem, "pairwise" if weight is None else "fusion", probs, mci,
                                   weight=weight if weight is not None else 0.5, ramp_mm=ramp)
                    extra = time.monotonic() - tick + (mci_s if weight is not None else 0.0)
                    _write(out, {**common, "method": method, "base": base, "steps": steps,
                                 "train_seconds": round(train_s, 1), "seconds": round(net_s + extra, 1),
                                 "rescored": bool(args.from_probabilities),
                                 "dice": score(pred, full_canonical, problem.annotated, names)})


def _write(out: Path, record: dict) -> None:
    means = {key: float(np.mean([v[key] for v in record["dice"].values()])) for key in ("unannotated", "extent")}
    record["mean"] = means
    with out.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(f"{record['case']} {record['mm']:>3} mm {record['method']:>8} base={record['base']}: unannotated "
          f"{means['unannotated']:.1f} extent {means['extent']:.1f} ({record['seconds']} s)", flush=True)


def table_and_plot(paths: list, png: Path | None) -> None:
    """Print a Markdown table per results file (means over its cases) and draw Dice vs mm: one line
    per (file, method, base), each against the MCI of the same file's cases."""
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                rows.append({**json.loads(line), "run": Path(path).stem})
    groups: dict = {}
    for r in rows:
        base = r["base"] if r["method"] != "mci" else None
        run = r["run"]
        groups.setdefault((run, r["method"], base, r["mm"]), []).append(r)
    print("| run | method | base | mm | cases | unannotated Dice (mean of organs) | extent Dice | per organ "
          "(unannotated) | steps | s/volume |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (run, method, base, mm), rs in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1], str(g[0][2]), g[0][3])):
        organs = rs[0]["dice"].keys()
        per = ", ".join(f"{o} {np.mean([r['dice'][o]['unannotated'] for r in rs]):.1f}" for o in organs)
        steps = "/".join(str(r.get("steps")) for r in rs) if method != "mci" else "-"
        print(f"| {run} | {method} | {base or '-'} | {mm:g} | {', '.join(sorted({r['case'] for r in rs}))} "
              f"| {np.mean([r['mean']['unannotated'] for r in rs]):.1f} | {np.mean([r['mean']['extent'] for r in rs]):.1f} "
              f"| {per} | {steps} | {np.mean([r['seconds'] for r in rs]):.1f} |")
    if png is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, method, base in sorted({g[:3] for g in groups}, key=str):
        mms = sorted(g[3] for g in groups if g[:3] == (run, method, base))
        ax.plot(mms, [np.mean([r["mean"]["unannotated"] for r in groups[(run, method, base, mm)]]) for mm in mms],
                marker="o", linewidth=2.5 if method == "mci" else 1.2, linestyle="--" if method == "mci" else "-",
                label=(f"ITK MCI (Fill between slices), {run}" if method == "mci" else f"{method}, base {base}, {run}")
                + f" [{', '.join(sorted({r['case'] for g in groups if g[:3] == (run, method, base) for r in groups[g]}))}]")
    ax.set_xlabel("mm between annotated slices")
    ax.set_ylabel("Dice on unannotated slices (mean of organs)")
    cases = sorted({r["case"] for r in rows})
    ax.set_title(f"pairseg fill vs contour interpolation, CHAOS MR T2 ({', '.join(cases)})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "chaos_t2"))
    parser.add_argument("--cases", nargs="+", default=["case_002"])
    parser.add_argument("--mm", nargs="+", type=float, default=[15.0, 30.0, 45.0])
    parser.add_argument("--bases", nargs="*", choices=["none", "shipped", "shipped-frozen"], default=["none", "shipped"],
                        help="network arms to train (none given: ITK MCI alone); shipped-frozen: the shipped "
                             "encoder kept as it is, decoder and new head trained")
    parser.add_argument("--budget-s", type=float, default=180.0)
    parser.add_argument("--size", type=int, default=128, help="training size with --base none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fusion-weights", nargs="+", type=float, default=[0.5],
                        help="network shares of the fusion score to score (0.5 is the method 'fusion')")
    parser.add_argument("--fusion-ramps", nargs="*", type=float, default=[],
                        help="also fuse with each weight growing from 0 at a drawn slice to full at this many mm "
                             "from the nearest one (pairseg.fill.network_share)")
    parser.add_argument("--save-probabilities", help="folder for the network probabilities, MCI and sparse labels")
    parser.add_argument("--from-probabilities", help="rescore the runs saved in this folder (no training; the "
                                                     "seconds are then those of the rescoring)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fill.jsonl"))
    parser.add_argument("--plot", nargs="+", help="print the tables of results files (and draw --png) instead of running")
    parser.add_argument("--png")
    args = parser.parse_args()
    if args.plot:
        table_and_plot(args.plot, Path(args.png) if args.png else None)
    else:
        run(args)


if __name__ == "__main__":
    main()
