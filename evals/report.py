"""Reports of an evaluation run: JSON (the stable schema), a Markdown table, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from memory.persistence import atomic_write_text

TABLE_METRICS = ("Recall", "NDCG", "HR", "C_KL", "TDD_genre", "TDD_persona", "MinorityRecall", "ILD", "Coverage")


def fmt_cell(v, digits: int = 4, sign: bool = False) -> str:
    """A table cell: "–" for a missing value, else ``digits`` decimals (with ``+`` when ``sign``)."""
    if v is None:
        return "–"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def json_number(x) -> float | None:
    """A metric as the result JSON holds it: rounded to 6 decimals; NaN, inf and None become null."""
    if x is None:
        return None
    x = float(x)
    return None if not np.isfinite(x) else round(x, 6)


def config_from_options(cls, options: dict):
    """``cls(**options)`` for a CLI command; a bad value is a :class:`UsageError` naming the option."""
    from pydantic import ValidationError

    from memory.errors import UsageError

    try:
        return cls(**options)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "option"
        raise UsageError(f"--{name.replace('_', '-')}", options.get(name), err["msg"]) from None


def markdown_table(doc: dict, k: int) -> str:
    """One row per model: every metric at ``k``, then NDCG's ratio to EASE with its paired CI."""
    head = ["model", *[f"{m}@{k}" for m in TABLE_METRICS], f"NDCG@{k} / EASE"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, d in doc["models"].items():
        row = [f"`{name}`"] + [fmt_cell(d["metrics"].get(f"{m}@{k}")) for m in TABLE_METRICS]
        vs = d.get("vs_ease", {}).get(f"NDCG@{k}")
        row.append("1 (reference)" if name == "ease" else
                   (f"{vs['ratio']:.3f} [{vs['ci'][0]:+.4f}, {vs['ci'][1]:+.4f}]" if vs and vs["ratio"] else "–"))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def bonus_section(doc: dict) -> list[str]:
    """``persona_calibrated`` with and without its exposure bonus (both replayed), per K, with
    ratios to EASE; then how the vectorised re-ranker used for selection compares with the replay."""
    eb = doc.get("exposure_bonus")
    if not eb:
        return []
    out = ["## Exposure bonus: `persona_calibrated` with and without it (test, replayed)", "",
           f"With: **{eb['with_bonus_label']}**; without: **{eb['without_bonus_label']}** (beta = 0, the other "
           "settings unchanged). Both lists come from `PersonaRecommender.recommend` user by user, each replay "
           "from an empty exposure store. Ratio to EASE in parentheses.", "",
           "| variant | K | NDCG | C_KL | MinorityRecall | Coverage |", "|---|---|---|---|---|---|"]
    for k in doc["config"]["ks"]:
        for key, title in (("with_bonus", f"beta = {eb['beta']:g}"), ("without_bonus", "beta = 0")):
            d = eb[key]
            cells = []
            for m in ("NDCG", "C_KL", "MinorityRecall", "Coverage"):
                v = d["metrics"].get(f"{m}@{k}")
                r = (d["vs_ease"].get(f"{m}@{k}") or {}).get("ratio")
                cells.append(f"{fmt_cell(v)} (x{r:.3f})" if r is not None else fmt_cell(v))
            out.append(f"| {title} | {k} | " + " | ".join(cells) + " |")
    gain = ", ".join(f"@{k} x{v:.3f}" for k, v in eb.get("coverage_gain_from_bonus", {}).items() if v)
    if gain:
        out += ["", f"Coverage with the bonus over coverage without it: {gain}."]
    rp = doc.get("replay", {}).get("per_k", {})
    rows = [(k, v["plural:persona_calibrated"]) for k, v in rp.items() if "plural:persona_calibrated" in v]
    if rows and all("vectorised_identical_share" in v for _, v in rows):
        out += ["", "The vectorised re-ranker that selected the settings (exposure after every user, same order) "
                "against the replay on test: identical lists for "
                + ", ".join(f"{100 * v['vectorised_identical_share']:.1f}% of users @{k} "
                            f"({100 * v['vectorised_identical_sets_share']:.1f}% identical sets)" for k, v in rows)
                + f"; users without personas (popularity fallback in the product): "
                  f"{doc['replay'].get('users_without_personas', 0)}."]
    return out + [""]


def markdown_report(doc: dict) -> str:
    """The whole run as Markdown: tables per K, chosen settings, the research bar, variants."""
    ds = doc["dataset"]
    cfg = doc["config"]
    out = [f"# Recommendation evaluation: {ds['name']}", "",
           f"{ds['evaluated_users']} evaluated users, {ds['test_positives']} test positives, {ds['items']} items; "
           f"split `{cfg['split']['strategy']}` (seed {cfg['split']['seed']}, positives: rating >= "
           f"{cfg['split']['positive_threshold']}); excluded from ranking: training {cfg['exclude']}. "
           f"Every setting chosen on a validation split carved from train. Run time "
           f"{doc['timings_s']['total']:.1f} s.", ""]
    replayed = [f"`{n}`" for n, d in doc["models"].items() if d.get("params", {}).get("lists") == "replay"]
    if replayed:
        out += [f"Lists of {', '.join(replayed)}: replayed through the product's own path "
                "(`PersonaRecommender.recommend` for each user in the split's order, each list added to the "
                "exposure counts before the next user; a fresh, empty exposure store per list length and per "
                "variant).", ""]
    for k in cfg["ks"]:
        out += [f"## Metrics @{k}", "", markdown_table(doc, k), ""]
    out += ["Bracketed: 95% bootstrap interval of the per-user NDCG difference to EASE (paired).", ""]
    t = doc["tuning"]
    out += ["## Chosen on validation", "",
            f"- EASE lambda: **{t['ease']['chosen_l2']:g}** (NDCG@10 per lambda: {t['ease']['grid_ndcg@10']})"]
    if "itemknn" in t:
        out.append(f"- ItemKNN k: **{t['itemknn']['chosen_k']}**")
    out.append(f"- Steck reference: **{t['steck']['chosen_label']}** ({t['steck']['rule']})")
    if "persona_calibrated" in t:
        out.append(f"- `plural:persona_calibrated`: **{t['persona_calibrated']['chosen_label']}** "
                   f"(constraints met on validation: {t['persona_calibrated']['constraints_met']})")
        out.append(f"- `plural:persona_only`: **{t['persona_only']['chosen_label']}**")
    out.append("")
    rb = doc.get("research_bar", {})
    if rb:
        out += ["## Research bar (test split)", ""]
        a = rb.get("a_relevance_equals_ease")
        if a:
            out.append(f"- (a) `relevance` vs EASE: NDCG ratio {a['ndcg_ratio']:.3f}, attributed share "
                       f"{a['attributed_share']}: **{'passed' if a['passed'] else 'FAILED'}**")
        b = rb.get("b_persona_calibrated_vs_steck")
        if b:
            out.append(f"- (b) `persona_calibrated` vs EASE: NDCG x{b['ndcg_ratio']}, C_KL x{b['c_kl_ratio']}, "
                       f"minority recall x{b['minority_recall_ratio']}, coverage x{b['coverage_ratio']}; "
                       f"Steck reference vs EASE: NDCG x{b['steck_ndcg_ratio']}, C_KL x{b['steck_c_kl_ratio']}, "
                       f"minority recall x{b['steck_minority_recall_ratio']}, coverage x{b['steck_coverage_ratio']}; "
                       f"coverage vs Steck x{b['coverage_vs_steck']}. Checks: "
                       + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in b["checks"].items())
                       + f": **{'passed' if b['passed'] else 'not passed'}**")
        nb = rb.get("b_without_exposure_bonus")
        if nb:
            out.append(f"- (b) without the exposure bonus (beta = 0, other settings the same): NDCG x{nb['ndcg_ratio']}, "
                       f"C_KL x{nb['c_kl_ratio']}, minority recall x{nb['minority_recall_ratio']}, coverage "
                       f"x{nb['coverage_ratio']}; coverage vs Steck x{nb['coverage_vs_steck']}. Checks: "
                       + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in nb["checks"].items())
                       + f": **{'passed' if nb['passed'] else 'not passed'}**")
        c = rb.get("c_persona_only")
        if c:
            for name, r in c.items():
                out.append(f"- (c) `{name}` vs EASE: NDCG x{r['NDCG']}, C_KL x{r['C_KL']}, minority recall "
                           f"x{r['MinorityRecall']}, coverage x{r['Coverage']}")
        out.append("")
    out += bonus_section(doc)
    if doc.get("minority_recall_by_tastes"):
        out += ["## Minority-taste recall@10 by number of personas", ""]
        groups = sorted({g for v in doc["minority_recall_by_tastes"].values() for g in v}, key=int)
        any_model = next(iter(doc["minority_recall_by_tastes"].values()))
        out.append("| model | " + " | ".join(f"{g} ({any_model[g]['users']} users)" for g in groups) + " |")
        out.append("|" + "---|" * (len(groups) + 1))
        for name, v in doc["minority_recall_by_tastes"].items():
            out.append(f"| `{name}` | " + " | ".join(fmt_cell(v.get(g, {}).get("mean")) for g in groups) + " |")
        out.append("")
    variants = [("Steck", t["steck"]["variants"])]
    if "persona_calibrated" in t:
        variants += [("Joint persona + genre", t["persona_calibrated"]["variants"]),
                     ("Persona-only", t["persona_only"]["variants"])]
    e_val = t["ease"]["validation@10"]
    e_test = doc["models"]["ease"]["metrics"]
    out += ["## Every variant tried (ratios to EASE @10; validation, then test)", ""]
    for title, vs in variants:
        out += [f"### {title}", "", "| variant | NDCG val | C_KL val | MinRec val | Cov val | NDCG test | C_KL test | "
                "MinRec test | Cov test |", "|---|---|---|---|---|---|---|---|---|"]
        for v in vs:
            r = [v["label"]]
            for src, ref in ((v["validation@10"], e_val), (v.get("test@10"), None)):
                for mname in ("NDCG", "C_KL", "MinorityRecall", "Coverage"):
                    if src is None:
                        r.append("–")
                        continue
                    base = ref[mname] if ref is not None else e_test[f"{mname}@10"]
                    r.append(f"{src[mname] / base:.3f}" if base else "–")
            out.append("| " + " | ".join(r) + " |")
        out.append("")
    out += ["## Timings (s)", "", ", ".join(f"{k} {v}" for k, v in doc["timings_s"].items()), ""]
    return "\n".join(out)


def tradeoff_plot(doc: dict, path: Path) -> None:
    """NDCG@10 against genre C_KL@10 on test: every model a point, every lambda a point.

    Left: every model. Right: a zoom on the region within ~6% of EASE's NDCG, where the
    calibration frontier is, with every variant tried.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_all, ax) = plt.subplots(1, 2, figsize=(14, 6.2), dpi=120, gridspec_kw={"width_ratios": [1, 1.5]})
    e = doc["models"]["ease"]["metrics"]
    highlight = {"ease": ("black", "*", 220), "ease+steck": ("#444444", "D", 90),
                 "plural:persona_calibrated": ("#1660c9", "P", 200), "plural:persona_only": ("#d07b00", "X", 110),
                 "plural:persona_fill": ("#b5487a", "s", 90), "itemknn": ("#6aa84f", "v", 90),
                 "multvae": ("#8e7cc3", "<", 90), "popularity": ("#999999", ">", 90), "content": ("#bbbbbb", "h", 90)}

    def models(axis, annotate):
        for name, d in doc["models"].items():
            if name in ("plural:relevance", "plural:calibrated"):
                continue  # the same lists as EASE and EASE + Steck
            color, marker, size = highlight.get(name, ("#333333", "o", 60))
            x, y = d["metrics"].get("C_KL@10"), d["metrics"].get("NDCG@10")
            if x is None or y is None:
                continue
            axis.scatter([x], [y], s=size, c=color, marker=marker, edgecolors="white", linewidths=0.8, zorder=5,
                         label=name + (" (chosen on validation)" if name in ("ease+steck", "plural:persona_calibrated",
                                                                              "plural:persona_only") else ""))
            if annotate:
                axis.annotate(name.replace("plural:", ""), (x, y), textcoords="offset points", xytext=(6, 4),
                              fontsize=7, color=color)

    models(ax_all, annotate=True)
    ax_all.set_title("All models", fontsize=10)
    ax_all.set_xlabel("genre miscalibration C_KL@10 (lower is better)")
    ax_all.set_ylabel("NDCG@10 (higher is better)")
    ax_all.grid(alpha=0.25)

    styles = {("steck", "rank"): ("#8c8c8c", "o", "EASE + Steck, rank relevance (each lambda)"),
              ("steck", "minmax"): ("#c9c9c9", "s", "EASE + Steck, min-max relevance (each lambda)"),
              ("joint", None): ("#4c9be8", "o", "Plural joint persona + genre variants"),
              ("persona-only", None): ("#e8a33d", "^", "Plural persona-only variants (no genre information)")}
    for (fam, rel), (color, marker, label) in styles.items():
        pts = [p for p in doc.get("tradeoff", []) if p["family"] == fam and (rel is None or f" {rel} " in
                                                                              p["label"] + " ")]
        if pts:
            ax.scatter([p["C_KL"] for p in pts], [p["NDCG"] for p in pts], s=22, c=color, marker=marker, alpha=0.7,
                       label=label, linewidths=0)
    models(ax, annotate=False)
    ax.axhline(0.98 * e["NDCG@10"], color="#cc0000", lw=0.8, ls="--", label="98% of EASE's NDCG@10")
    ax.set_ylim(0.94 * e["NDCG@10"], e["NDCG@10"] * 1.01)
    near = [p["C_KL"] for p in doc.get("tradeoff", []) if p["NDCG"] >= 0.94 * e["NDCG@10"]]
    if near:
        ax.set_xlim(0.9 * min(near + [e["C_KL@10"]]), 1.08 * max(near + [e["C_KL@10"]]))
    ax.set_xlabel("genre miscalibration C_KL@10 (lower is better)")
    ax.set_title("Zoom: the calibration frontier near EASE's accuracy", fontsize=10)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
    fig.suptitle(f"Accuracy vs calibration on the {doc['dataset']['name']} test split (every setting chosen on "
                 f"validation)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def minority_plot(doc: dict, path: Path) -> None:
    """Minority-taste recall@10 per number of personas of the user, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = doc.get("minority_recall_by_tastes") or {}
    keep = [m for m in ("ease", "ease+steck", "plural:persona_calibrated", "plural:persona_fill",
                        "plural:persona_only", "multvae", "itemknn") if m in data]
    if not keep:
        return
    groups = sorted({g for v in data.values() for g in v}, key=int)
    fig, ax = plt.subplots(figsize=(9, 5), dpi=130)
    width = 0.8 / len(keep)
    for j, m in enumerate(keep):
        ys = [data[m].get(g, {}).get("mean") or 0.0 for g in groups]
        ax.bar(np.arange(len(groups)) + j * width - 0.4 + width / 2, ys, width, label=m)
    users = data[keep[0]]
    ax.set_xticks(np.arange(len(groups)), [f"{g} persona{'s' if g != '1' else ''}\n({users[g]['users']} users)"
                                           for g in groups])
    ax.set_ylabel("minority-taste recall@10")
    ax.set_title("Does the list keep a user's minority tastes? (by how many tastes the user has)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_json_and_markdown(doc: dict, out_dir: str | Path, markdown: str) -> dict[str, Path]:
    """Write ``results.json`` (the document) and ``results.md`` (``markdown``) into ``out_dir``,
    each atomically; returns their paths. Every ``plural eval`` command writes its outputs so."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    atomic_write_text(paths["json"], json.dumps(doc, indent=2, sort_keys=False))
    atomic_write_text(paths["markdown"], markdown)
    return paths


def write_reports(doc: dict, out_dir: str | Path) -> dict[str, str]:
    """Write ``results.json``, ``results.md`` and the plots; returns their paths."""
    out = Path(out_dir)
    paths = write_json_and_markdown(doc, out, markdown_report(doc))
    try:
        paths["tradeoff_png"] = out / "tradeoff.png"
        tradeoff_plot(doc, paths["tradeoff_png"])
        if doc.get("minority_recall_by_tastes"):
            paths["minority_png"] = out / "minority_by_tastes.png"
            minority_plot(doc, paths["minority_png"])
    except ImportError:  # matplotlib is the `eval` extra
        paths.pop("tradeoff_png", None)
        paths.pop("minority_png", None)
    return {k: str(v) for k, v in paths.items()}
