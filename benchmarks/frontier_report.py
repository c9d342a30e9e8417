"""The frontier benchmark's targets, table and chart, from its results dict."""
from __future__ import annotations

import numpy as np

from discodiff.benchmarks.common import Target, pyplot, save_figure


def _rows(res: dict, variant: str) -> list[dict]:
    return res["models"].get(variant, {}).get("rows", [])


def _quality_key(res: dict) -> str:
    return "fd_cls_excess" if res["data"] == "shapes" else "excess_w2_matched"


def targets(res: dict) -> list[Target]:
    out = []

    def add(name, value, ok, **detail):
        out.append(Target(name, value, ok, detail))

    disco, plain = _rows(res, "disco"), _rows(res, "plain")
    grid = res["models"].get("disco", {}).get("rmse_grid", [])
    # fitted against EDM rho=7, same solver, 5-8 calls: teacher RMSE at least 1.5x lower
    ratios = {}
    for r in grid:
        if r["schedule"] == "fitted" and r["nfe"] in (5, 6, 8):
            edm = next((e for e in grid if (e["solver"], e["schedule"], e["nfe"]) == (r["solver"], "edm", r["nfe"])), None)
            if edm:
                ratios[f"{r['solver']}/{r['nfe']}"] = edm["teacher_rmse"] / r["teacher_rmse"]
    if ratios:
        worst = min(ratios, key=ratios.get)
        add("fitted vs EDM rho=7, same solver, 5-8 calls: teacher RMSE >= 1.5x lower (worst case)", ratios[worst],
            ratios[worst] >= 1.5, worst=worst, median=float(np.median(list(ratios.values()))), ratios=ratios)
    if res["data"] == "shapes":
        h35 = next((r for r in disco if (r["solver"], r["schedule"], r["nfe"]) == ("heun", "edm", 35)), None)
        few = [r for r in disco if r["nfe"] <= 8]
        if h35 and few:
            best = min(few, key=lambda r: r["fd_cls_excess"])
            ratio = best["fd_cls_excess"] / max(h35["fd_cls_excess"], 1e-9)
            speed = h35["ms_per_sample"] / best["ms_per_sample"]
            tag = f"{best['solver']} {best['schedule']} {best['nfe']} calls"
            add(f"DisCo <= 8 calls ({tag}): FD_cls excess <= 1.25x Heun 35 (ratio)", ratio, ratio <= 1.25,
                fd_excess=best["fd_cls_excess"], heun35_fd_excess=h35["fd_cls_excess"])
            add(f"DisCo <= 8 calls ({tag}): >= 4x lower latency than Heun 35 at batch 32 (ratio)", speed, speed >= 4)
        d6, p6 = [r for r in disco if r["nfe"] == 6], [r for r in plain if r["nfe"] == 6]
        if d6 and p6:
            for key, what in (("fd_cls_excess", "FD_cls excess"), ("teacher_rmse", "teacher RMSE")):
                d, p = min(r[key] for r in d6), min(r[key] for r in p6)
                add(f"6 calls, best rows: DisCo {what} <= 2/3 of plain's (ratio)", d / max(p, 1e-9), d <= 2 / 3 * p,
                    disco=d, plain=p)
    else:
        d6 = [r for r in disco if r["nfe"] == 6]
        if d6:
            best = min(d6, key=lambda r: (r["excess_off_mode"], r["excess_w2_matched"]))
            tag = f"{best['solver']} {best['schedule']}"
            add(f"toy8 DisCo at 6 calls ({tag}): excess off-mode <= 1 %", best["excess_off_mode"], best["excess_off_mode"] <= 0.01)
            add(f"toy8 DisCo at 6 calls ({tag}): count-matched excess W2 <= 0.05", best["excess_w2_matched"],
                best["excess_w2_matched"] <= 0.05)
    return out


def table(res: dict) -> str:
    q = _quality_key(res)
    extra = ["class_adherence"] if res["data"] == "shapes" else ["excess_w2", "excess_off_mode"]
    head = f"{'model':6} {'solver':6} {'schedule':8} {'calls':>5} {'teacher RMSE':>12} {q:>18} " + " ".join(
        f"{k:>16}" for k in extra) + f" {'ms/sample':>9}"
    lines = [f"frontier on {res['data']} (n={res['n']} per row)", head, "-" * len(head)]
    for variant in ("disco", "plain"):
        for r in sorted(_rows(res, variant), key=lambda r: (r["solver"], r["schedule"], r["nfe"])):
            lines.append(f"{variant:6} {r['solver']:6} {r['schedule']:8} {r['nfe']:5d} {r['teacher_rmse']:12.4f} {r[q]:18.4f} "
                         + " ".join(f"{r[k]:16.4f}" for k in extra) + f" {r['ms_per_sample']:9.2f}")
    if "fd_floor" in res:
        lines.append(f"FD_cls real-vs-real floor at n={res['n']}: {res['fd_floor']:.2f}; classifier accuracy "
                     f"{res['classifier_accuracy']:.3f}")
    lines.append("")
    lines += [t.line() for t in res["targets"]]
    return "\n".join(lines)


def chart(res: dict, path) -> None:
    plt = pyplot()
    q = _quality_key(res)
    label = {"fd_cls_excess": "FD_cls excess over real-vs-real", "excess_w2_matched": "excess W2 (count-matched)"}[q]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), dpi=100)
    colours = {}
    for variant, ls in (("disco", "-"), ("plain", "--")):
        rows, best = _rows(res, variant), res["models"][variant]["best_schedule"]
        # each solver on its best schedule, and the EDM rho=7 baselines: every row is in the .txt/.json
        shown = sorted({(s, sch) for s, sch in best.items()} | {("heun", "edm"), ("euler", "edm")})
        for key in shown:
            rs = sorted((r for r in rows if (r["solver"], r["schedule"]) == key), key=lambda r: r["nfe"])
            if not rs:
                continue
            c = colours.setdefault(key, f"C{len(colours) % 10}")
            name = f"{variant} {key[0]} {key[1]}"
            axes[0].plot([r["nfe"] for r in rs], [max(r[q], 1e-3) for r in rs], ls, marker="o", ms=3, color=c, label=name)
            axes[1].plot([r["ms_per_sample"] for r in rs], [max(r[q], 1e-3) for r in rs], ls, marker="o", ms=3, color=c)
            axes[2].plot([r["nfe"] for r in rs], [r["teacher_rmse"] for r in rs], ls, marker="o", ms=3, color=c)
    for ax, xl, yl in ((axes[0], "denoiser calls", label), (axes[1], "end to end, ms per sample (batch 32)", label),
                       (axes[2], "denoiser calls", "RMSE to the Heun teacher")):
        ax.set_xscale("log")
        ax.set_yscale("log")            # few-call failures are 100x worse than the good rows
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6, ncol=2)
    save_figure(fig, path, f"{res['data']}: quality against calls and latency; DisCo-Diff solid, plain twin dashed")
