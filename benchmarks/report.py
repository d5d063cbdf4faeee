"""Tables and plots from the recorded benchmark results (no training, seconds to run).

Reads ``results/limited/*.json`` (limited_data.py) and ``results/speed.json`` (speed.py); writes
``results/tables.md`` and the PNG figures in ``benchmarks/``.

    .venv/bin/python benchmarks/report.py
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
ORGANS = ["liver", "right kidney", "left kidney", "spleen"]
SHORT = {"liver": "liver", "right kidney": "R kid", "left kidney": "L kid", "spleen": "spleen"}
ORDER = ["c2fcn", "cfcn", "c2fcn-identical", "deeplabv3plus", "unet", "c2fcn-os8", "c2fcn-noaug",
         "deeplabv3plus-noaug"]
LABEL = {"c2fcn": "C2FCN", "cfcn": "CFCN", "c2fcn-identical": "C2FCN identical pairs", "deeplabv3plus": "DeepLabv3+",
         "unet": "U-Net", "c2fcn-os8": "C2FCN OS8", "c2fcn-noaug": "C2FCN, no augmentation",
         "deeplabv3plus-noaug": "DeepLabv3+, no augmentation"}


def load_jobs() -> list[dict]:
    jobs = []
    for path in sorted((RESULTS / "limited").glob("*.json")):
        jobs.append(engine_readout(json.loads(path.read_text())))
    return jobs


def engine_readout(job: dict) -> dict:
    """Report a C2FCN trained on identical pairs with the read-out the engine gives it (its AND
    channels: ``TrainConfig.model_readout``). Runs made before that rule recorded the union as their
    main metrics and the AND Dice as ``other_readout`` of the final milestone: swap the two and keep
    that milestone only (its ASSD and Dice-global were computed for the union, so they are dropped)."""
    final = job["milestones"].get(str(job["job"]["steps"]))
    other = (final or {}).get("other_readout")
    if job["method"] != "c2fcn-identical" or not other or other["readout"] != "and":
        return job

    def as_summary(table: dict) -> dict:
        return {"classes": {o: {"dice_mean": table["classes"][o], "dice_global": None, "assd_mean": None}
                            for o in ORGANS},
                "mean": {"dice_mean": table["mean"], "dice_global": None, "assd_mean": None}}

    def as_table(summary: dict) -> dict:
        return {"classes": {o: summary["classes"][o]["dice_mean"] for o in ORGANS}, "mean": summary["mean"]["dice_mean"]}

    swapped = dict(final, raw=as_summary(other["raw"]), lcc=as_summary(other["lcc"]), assd_computed=False,
                   alt_decode_dice=None, other_readout={"readout": "union", "raw": as_table(final["raw"]),
                                                        "lcc": as_table(final["lcc"])})
    job["milestones"] = {str(job["job"]["steps"]): swapped}
    job["readout_swapped"] = True
    return job


def ms(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def ms_mm(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def milestone(job: dict, step: int | None = None) -> dict | None:
    ms_ = job["milestones"]
    if step is None:
        step = job["job"]["steps"]
    return ms_.get(str(step))


def equal_epoch_step(job: dict) -> int:
    own, pair = job["plan"]["steps_per_epoch"], job["c2fcn_plan"]["steps_per_epoch"]
    return max(1, round(job["job"]["steps"] / pair * own))


def accuracy_table(rows: list[tuple[str, list[dict], str]], title: str) -> list[str]:
    """rows: (label, milestone results over training cases, budget text)."""
    out = [f"**{title}**", "",
           "| method | budget | train cases | " + " | ".join(f"{SHORT[o]} Dice raw / LCC" for o in ORGANS)
           + " | mean Dice raw / LCC | mean Dice-global (LCC) | mean ASSD mm (LCC) |",
           "|---|---|---|" + "---|" * (len(ORGANS) + 3)]
    for label, results, budget in rows:
        if not results:
            continue
        cells = []
        for organ in ORGANS:
            raw = [r["raw"]["classes"][organ]["dice_mean"] for r in results]
            lcc = [r["lcc"]["classes"][organ]["dice_mean"] for r in results]
            cells.append(f"{ms(raw)} / {ms(lcc)}")
        raw_mean = [r["raw"]["mean"]["dice_mean"] for r in results]
        lcc_mean = [r["lcc"]["mean"]["dice_mean"] for r in results]
        glob = [r["lcc"]["mean"]["dice_global"] for r in results]
        assd = [r["lcc"]["mean"]["assd_mean"] for r in results] if all(r.get("assd_computed", True) for r in results) else []
        out.append(f"| {label} | {budget} | {len(results)} | " + " | ".join(cells)
                   + f" | {ms(raw_mean)} / {ms(lcc_mean)} | {ms(glob)} | {ms_mm(assd)} |")
    out.append("")
    return out


def main() -> int:
    jobs = load_jobs()
    lines = ["# Generated tables (benchmarks/report.py)", ""]
    one = [j for j in jobs if len(j["train_cases"]) == 1]
    by_method: dict[str, list[dict]] = defaultdict(list)
    for job in one:
        if job["job"]["steps"] == 250:
            by_method[job["method"]].append(job)

    # --- equal steps -------------------------------------------------------------------------
    rows = []
    for method in ORDER:
        finished = [j for j in by_method.get(method, []) if milestone(j)]
        rows.append((LABEL[method], [milestone(j) for j in finished], "250 steps"))
    lines += accuracy_table(rows, "One training case, equal optimiser steps (250 steps, 128², batch 8, OS16)")

    # --- equal epochs ------------------------------------------------------------------------
    rows = []
    for method in ORDER:
        finished = [j for j in by_method.get(method, []) if milestone(j)]
        if not finished or method == "c2fcn-identical":  # one sample per slice: no equal-epoch milestone
            continue
        if finished[0]["arch"] in ("deeplabv3plus", "unet"):  # single-image: stopped at C2FCN's epochs
            res = [j["milestones"].get(str(equal_epoch_step(j))) for j in finished]
            res = [r for r in res if r]
            ep = [r["epochs"] for r in res]
            rows.append((LABEL[method], res, f"{np.mean(ep):.1f} epochs ({', '.join(str(equal_epoch_step(j)) for j in finished)} steps)"))
        else:
            res = [milestone(j) for j in finished]
            rows.append((LABEL[method], res, f"{np.mean([r['epochs'] for r in res]):.1f} epochs (250 steps)"))
    lines += accuracy_table(rows, "One training case, equal epochs (the baselines stopped at C2FCN's epoch count)")

    # --- per training case, C2FCN - DeepLabv3+ ----------------------------------------------
    lines += ["**Per training case: 4-organ mean Dice-per-case (LCC), every milestone**", "",
              "| method | training case | " + "steps (epochs): Dice |", "|---|---|---|"]
    for method in ORDER:
        for job in sorted(by_method.get(method, []), key=lambda j: j["train_cases"]):
            cells = [f"{s} ({m['epochs']:.1f}): {100 * m['lcc']['mean']['dice_mean']:.1f}"
                     for s, m in sorted(job["milestones"].items(), key=lambda kv: int(kv[0]))]
            lines.append(f"| {LABEL[method]} | {job['train_cases'][0]} | {'; '.join(cells)} |")
    lines.append("")
    for pairwise, single, title in (("c2fcn", "deeplabv3plus", ""),
                                    ("c2fcn-noaug", "deeplabv3plus-noaug", ", both trained without augmentation")):
        lines += gap_table(by_method, pairwise, single, title)

    # --- read-out of f(x, x) ---------------------------------------------------------------------
    readout_rows = []
    for job in jobs:
        if job["arch"] != "c2fcn" or not milestone(job) or not milestone(job).get("other_readout"):
            continue
        own, other = milestone(job), milestone(job)["other_readout"]
        readout_rows.append((job, own, other))
    if readout_rows:
        lines += ["<a id=\"read-out\"></a>**C2FCN read-out of f(x, x): the same weights decoded two ways "
                  "(4-organ mean Dice-per-case, LCC; per organ AND → union)**", "",
                  "| job | steps | AND channels (Eq. 12) | AND or XOR (union) | per organ |", "|---|---|---|---|---|"]
        for job, own, other in sorted(readout_rows, key=lambda r: r[0]["job"]["name"]):
            by_readout = {other["readout"]: (other["lcc"]["mean"], other["lcc"]["classes"]),
                          {"and": "union", "union": "and"}[other["readout"]]: (
                              own["lcc"]["mean"]["dice_mean"], {o: own["lcc"]["classes"][o]["dice_mean"] for o in ORGANS})}
            (and_mean, and_cls), (uni_mean, uni_cls) = by_readout["and"], by_readout["union"]
            lines.append(f"| {job['job']['name']} | {job['job']['steps']} | {100 * and_mean:.1f} | {100 * uni_mean:.1f} | "
                         + ", ".join(f"{SHORT[o]} {100 * and_cls[o]:.0f}→{100 * uni_cls[o]:.0f}" for o in ORGANS) + " |")
        lines.append("")

    # --- budget sweep -------------------------------------------------------------------------------
    sweep = [j for j in jobs if len(j["train_cases"]) == 1 and j["train_cases"][0] == "case_002"
             and j["method"] in ("c2fcn", "deeplabv3plus")]
    if sweep:
        lines += ["**Budget sweep, trained on case_002: 4-organ mean Dice-per-case (LCC) at every milestone "
                  "(longest run of each method)**", "",
                  "| method | steps (epochs): Dice |", "|---|---|"]
        for method in ("c2fcn", "deeplabv3plus"):
            runs = [j for j in sweep if j["method"] == method]
            if not runs:
                continue
            job = max(runs, key=lambda j: (len(j["milestones"]), j["job"]["steps"]))
            cells = [f"{s} ({m['epochs']:.0f}): {100 * m['lcc']['mean']['dice_mean']:.1f}"
                     for s, m in sorted(job["milestones"].items(), key=lambda kv: int(kv[0]))]
            lines.append(f"| {LABEL[method]} | {'; '.join(cells)} |")
        lines.append("")

    # --- decoding -----------------------------------------------------------------------------
    lines += ["**Decoding the per-class maps into one label (raw, no post-processing), 250 steps**", "",
              "| method | engine decode: 1+argmax p_k if max p_k ≥ 0.5 | argmax over [1−Σp_k, p_1..p_K] |", "|---|---|---|"]
    for method in ORDER:
        finished = [j for j in by_method.get(method, []) if milestone(j)]
        finished = [j for j in finished if milestone(j).get("alt_decode_dice")]
        if finished:
            eng = [milestone(j)["raw"]["mean"]["dice_mean"] for j in finished]
            alt = [float(np.mean(list(milestone(j)["alt_decode_dice"].values()))) for j in finished]
            lines.append(f"| {LABEL[method]} | {ms(eng)} | {ms(alt)} |")
    lines.append("")

    # --- number of training cases -------------------------------------------------------------
    curve = defaultdict(dict)
    for job in jobs:
        if job["job"]["steps"] == 250 and job["method"] in ("c2fcn", "deeplabv3plus") and milestone(job):
            n = len(job["train_cases"])
            curve[job["method"]].setdefault(n, []).append(milestone(job)["lcc"]["mean"]["dice_mean"])
    if curve:
        lines += ["**4-organ mean Dice (LCC) against the number of training cases, 250 steps**", "",
                  "| method | " + " | ".join(f"{n} case(s)" for n in sorted({n for c in curve.values() for n in c})) + " |",
                  "|---|" + "---|" * len({n for c in curve.values() for n in c})]
        for method, points in curve.items():
            lines.append(f"| {LABEL[method]} | " + " | ".join(ms(points.get(n, [])) for n in sorted({n for c in curve.values() for n in c})) + " |")
        lines.append("")

    # --- timing of the runs ---------------------------------------------------------------------
    lines += ["**Training cost of the accuracy runs (1 thread per run, 2 runs side by side)**", "",
              "| job | samples/epoch | steps/epoch | train s | load avg at end |", "|---|---|---|---|---|"]
    for job in jobs:
        if job.get("complete"):
            lines.append(f"| {job['job']['name']} | {job['plan']['samples_per_epoch']} | {job['plan']['steps_per_epoch']} | "
                         f"{job['train_seconds_total']:.0f} | {job['machine_end']['loadavg'][0]:.2f} |")
    lines.append("")

    for name, title in (("speed_quiet.json", "quiet machine"), ("speed.json", "machine shared with accuracy runs")):
        speed = RESULTS / name
        if speed.is_file():
            lines += [f"### results/{name} ({title})", ""] + speed_tables(json.loads(speed.read_text()))
    cost = RESULTS / "dice_cost.json"
    if cost.is_file():
        c = json.loads(cost.read_text())["dice_cost"]
        lines += [f"**Dice cost of numerics variants ({c['model']}, {len(c['test_cases'])} test cases, LCC)**", "",
                  "| variant | mean Dice | inference s (15 cases, shared machine) |", "|---|---|---|"]
        lines += [f"| {r['variant']} | {100 * r['dice_mean_lcc']:.2f} | {r['infer_seconds_15_cases']:.0f} |" for r in c["rows"]]
        lines.append("")
    (RESULTS / "tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plots(jobs, by_method, curve)
    return 0


def gap_table(by_method: dict, pairwise: str, single: str, title: str) -> list[str]:
    """C2FCN − DeepLabv3+ per training case, at equal steps and at equal epochs."""
    gaps = []
    for c2 in by_method.get(pairwise, []):
        for dl in by_method.get(single, []):
            if dl["train_cases"] == c2["train_cases"] and milestone(c2) and milestone(dl):
                eq = dl["milestones"].get(str(equal_epoch_step(dl)))
                gaps.append((c2["train_cases"][0],
                             100 * (milestone(c2)["lcc"]["mean"]["dice_mean"] - milestone(dl)["lcc"]["mean"]["dice_mean"]),
                             100 * (milestone(c2)["lcc"]["mean"]["dice_mean"] - eq["lcc"]["mean"]["dice_mean"]) if eq else None,
                             {o: 100 * (milestone(c2)["lcc"]["classes"][o]["dice_mean"] - milestone(dl)["lcc"]["classes"][o]["dice_mean"]) for o in ORGANS}))
    if not gaps:
        return []
    lines = [f"**C2FCN − DeepLabv3+ (Dice points, LCC, 4-organ mean{title})**", "",
             "| training case | equal steps (250) | equal epochs | per organ at equal steps |", "|---|---|---|---|"]
    for case, steps_gap, epoch_gap, organ in gaps:
        epoch_cell = f"{epoch_gap:+.1f}" if epoch_gap is not None else "–"
        lines.append(f"| {case} | {steps_gap:+.1f} | {epoch_cell} | "
                     + ", ".join(f"{SHORT[o]} {v:+.1f}" for o, v in organ.items()) + " |")
    epoch_gaps = [g[2] for g in gaps if g[2] is not None]
    lines.append(f"| mean | {np.mean([g[1] for g in gaps]):+.1f} | "
                 + (f"{np.mean(epoch_gaps):+.1f}" if epoch_gaps else "–") + " | |")
    return lines + [""]


def speed_tables(s: dict) -> list[str]:
    lines = ["## Speed", ""]
    if "matmul" in s:
        m = s["matmul"]
        yardstick = ""
        if "onednn_gflops" in m:
            yardstick = (f" (the larger of torch.mm {m['gflops_mm']:.1f} and the same product as a oneDNN 1×1 "
                         f"convolution {m['onednn_gflops']:.1f})")
        lines.append(f"fp32 matmul {m['n']}²: {m['gflops']:.1f} GFLOP/s at the start{yardstick}, "
                     f"{s.get('matmul_end', {}).get('gflops', float('nan')):.1f} at the end; load average "
                     f"{s['machine_start']['loadavg']} → {s.get('machine_end', {}).get('loadavg')}")
        lines.append("")
    if s.get("training_step"):
        lines += ["| training step | size | GFLOP/step | median s | GFLOP/s | of matmul |", "|---|---|---|---|---|---|"]
        for r in s["training_step"]:
            lines.append(f"| {r['arch']} ({r['images_per_step']} images) | {r['size']} | {r['gflop_per_step']:.0f} | "
                         f"{r['median_s']:.2f} | {r['gflops_achieved']:.1f} | {100 * r['fraction_of_matmul']:.0f} % |")
        lines.append("")
    if s.get("epoch_rate"):
        lines += ["| epoch (real pipeline) | size | steps timed | samples/s epoch | samples/s pure step | ratio | pipeline alone, ms/batch |",
                  "|---|---|---|---|---|---|---|"]
        for r in s["epoch_rate"]:
            steps = r.get("epoch_steps", r.get("steps_timed"))
            lines.append(f"| {r['arch']} | {r['size']} | {steps} | {r['samples_per_s_epoch']:.2f} | {r['samples_per_s_pure']:.2f} | "
                         f"{100 * r['epoch_over_pure']:.1f} % | {r.get('pipeline_ms_per_batch', float('nan')):.0f} |")
        lines.append("")
    if s.get("end_to_end"):
        lines += ["| end to end 256×256×40 | read | normalise | infer | LCC | write | total | GFLOP | pure compute at matmul rate | total / pure |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in s["end_to_end"]:
            st = r["stages_median_s"]
            lines.append(f"| {r['arch']} | {st['read']:.2f} | {st['normalize']:.2f} | {st['infer']:.2f} | {st['postprocess']:.2f} | "
                         f"{st['write']:.2f} | {st['total']:.2f} | {r['gflop_infer']:.0f} | {r['pure_compute_s_at_matmul_rate']:.2f} | "
                         f"{r['total_over_pure_compute']:.2f}× |")
        if "end_to_end_c2fcn_over_deeplab" in s:
            lines.append(f"\nC2FCN / DeepLabv3+ end-to-end time: {s['end_to_end_c2fcn_over_deeplab']:.3f}×")
        lines.append("")
    if s.get("inference_variants"):
        lines += ["| C2FCN inference core variant (16 slices, 256²) | input | threads | median s | speed-up vs plain |", "|---|---|---|---|---|"]
        for r in s["inference_variants"]:
            if "median_s" in r:
                speedup = r.get("speedup_vs_plain", r.get("speedup_vs_eager_same_input"))
                versus = "" if "speedup_vs_plain" in r or speedup is None else " (vs the row above)"
                lines.append(f"| {r['variant']} | {r['size']} | {r['threads']} | {r['median_s']:.2f} | "
                             + (f"{speedup:.2f}×{versus} |" if speedup is not None else "– |"))
            else:
                lines.append(f"| {r['variant']} | | | failed: {r.get('error', '')[:120]} | |")
        lines.append("")
    if s.get("ct_peak_rss"):
        lines.append(f"CT-sized volume: {json.dumps(s['ct_peak_rss'])}")
        lines.append("")
    return lines


def plots(jobs, by_method, curve) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in ORDER if any(milestone(j) for j in by_method.get(m, []))]
    if methods:
        fig, ax = plt.subplots(figsize=(9, 4))
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            res = [milestone(j) for j in by_method[method] if milestone(j)]
            means = [100 * np.mean([r["lcc"]["classes"][o]["dice_mean"] for r in res]) for o in ORGANS + ["mean"]
                     if o != "mean"] + [100 * np.mean([r["lcc"]["mean"]["dice_mean"] for r in res])]
            stds = [100 * np.std([r["lcc"]["classes"][o]["dice_mean"] for r in res]) for o in ORGANS] + \
                   [100 * np.std([r["lcc"]["mean"]["dice_mean"] for r in res])]
            ax.bar(np.arange(5) + i * width, means, width, yerr=stds, capsize=2,
                   label=f"{LABEL[method]} (n={len(res)})")
        ax.set_xticks(np.arange(5) + width * (len(methods) - 1) / 2)
        ax.set_xticklabels(ORGANS + ["4-organ mean"])
        ax.set_ylabel("Dice-per-case % (LCC)")
        ax.set_title("CHAOS T2-SPIR, one training case, 250 steps, 128², mean ± std over training cases")
        ax.legend(fontsize=8)
        ax.set_ylim(0, 100)
        fig.tight_layout()
        fig.savefig(BENCH / "dice_per_organ.png", dpi=110)
        plt.close(fig)

    if len({n for points in curve.values() for n in points}) > 1:  # a curve needs 2+ training-set sizes
        fig, ax = plt.subplots(figsize=(5, 4))
        for method, points in curve.items():
            ns = sorted(points)
            ax.errorbar(ns, [100 * np.mean(points[n]) for n in ns], yerr=[100 * np.std(points[n]) for n in ns],
                        marker="o", capsize=3, label=LABEL[method])
        ax.set_xlabel("training cases")
        ax.set_ylabel("4-organ mean Dice % (LCC)")
        ax.set_xticks(sorted({n for points in curve.values() for n in points}))
        ax.set_title("250 steps, 128², batch 8")
        ax.legend()
        fig.tight_layout()
        fig.savefig(BENCH / "dice_vs_cases.png", dpi=110)
        plt.close(fig)

    # Dice against steps and against epochs
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in ORDER:
        for job in [j for j in jobs if j["method"] == method and len(j["train_cases"]) == 1]:
            points = sorted((int(s), m) for s, m in job["milestones"].items())
            if not points:
                continue
            kw = dict(marker="o", alpha=0.8, color=f"C{ORDER.index(method)}",
                      label=LABEL[method] if job["train_cases"][0] == "case_002" and job["job"]["steps"] == 250 else None)
            axes[0].plot([p[0] for p in points], [100 * p[1]["lcc"]["mean"]["dice_mean"] for p in points], **kw)
            axes[1].plot([p[1]["epochs"] for p in points], [100 * p[1]["lcc"]["mean"]["dice_mean"] for p in points], **kw)
    for ax, xlabel in zip(axes, ("optimiser steps", "epochs")):
        ax.set_xlabel(xlabel)
        ax.set_xscale("log")
        ax.set_ylabel("4-organ mean Dice % (LCC)")
        ax.legend(fontsize=8)
    fig.suptitle("One training case (one line per training case)")
    fig.tight_layout()
    fig.savefig(BENCH / "dice_vs_budget.png", dpi=110)
    plt.close(fig)
    overlays()


def overlays() -> None:
    """Prediction vs ground truth on a few slices of one test case (as the paper's Fig. 5)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from common import Cases, chaos_dir

    preds = BENCH / "work" / "preds"
    wanted = [("deeplabv3plus", "DeepLabv3+"), ("c2fcn", "C2FCN")]
    files = {m: preds / f"{m}__case_002__250__250.npz" for m, _ in wanted}
    if not all(f.is_file() for f in files.values()):
        return
    loaded = {m: np.load(f) for m, f in files.items()}
    test = "case_008"
    cases = Cases(chaos_dir(), [test])
    image, label = cases.norm[test], cases.label[test]
    liver = np.nonzero((label > 0).reshape(label.shape[0], -1).any(1))[0]
    picks = np.linspace(liver[0] + 2, liver[-1] - 2, 4).round().astype(int)
    cmap = ListedColormap([(0, 0, 0, 0), (0.9, 0.3, 0.3, 1), (0.3, 0.8, 0.3, 1), (0.3, 0.5, 1, 1), (1, 0.85, 0.2, 1)])
    columns = [("ground truth", label)] + [(title, loaded[m][test]) for m, title in wanted]
    fig, axes = plt.subplots(len(picks), len(columns), figsize=(3 * len(columns), 3 * len(picks)))
    for r, z in enumerate(picks):
        for c, (title, lab) in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(image[z], cmap="gray")
            ax.imshow(np.ma.masked_equal(lab[z], 0), cmap=cmap, vmin=0, vmax=4, alpha=0.45, interpolation="nearest")
            if c > 0:
                ax.contour(label[z] > 0, levels=[0.5], colors="white", linewidths=0.6)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title)
            if c == 0:
                ax.text(3, 12, f"slice {z}", color="white", fontsize=8)
    fig.suptitle(f"{test}: trained on case_002 only, 250 steps (white line: ground-truth outline)")
    fig.tight_layout()
    fig.savefig(BENCH / "overlays.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
