"""Dataset card of the QKE-solver campaign: counts per family, sampling plots (docs/dataset.md).

    python tools/dataset_card.py            # rewrites the generated part of docs/dataset.md and
                                            # docs/figures/dataset_*.png from data/qke/*.h5
Needs h5py and matplotlib (the training extra). Held-out files: campaign seeds 900-999.
"""
from __future__ import annotations

import argparse
import fnmatch
import glob
import json
from pathlib import Path

import h5py
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import dodo  # noqa: E402
from dodo._atomic import atomic_path  # noqa: E402
from dodo.conventions import from_emu_layout  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOLDOUT = "*_seed9[0-9][0-9].h5"
BEGIN, END = "<!-- dataset-card:begin -->", "<!-- dataset-card:end -->"


def family_of(path: Path) -> str:
    name = path.name
    return "emu (first campaigns)" if name.startswith("random_crossing") else name.split("_seed")[0]


def load() -> list[dict]:
    rows = []
    for path in sorted(Path(p) for p in glob.glob(str(ROOT / "data/qke/*.h5"))):
        with h5py.File(path, "r") as f:
            if "F4_initial(1|ccm)" not in f or len(f["F4_initial(1|ccm)"]) == 0:
                continue
            rows.append({"path": path, "family": family_of(path), "held_out": fnmatch.fnmatch(path.name, HOLDOUT),
                         "F_init": from_emu_layout(f["F4_initial(1|ccm)"][()]),
                         "F_final": from_emu_layout(f["F4_final(1|ccm)"][()]),
                         "growth": f["growthRate(1|s)"][()], "complete": bool(f.attrs.get("complete", True)),
                         "dropped": len(json.loads(f.attrs.get("dropped", "{}"))),
                         # dodo simulate --select-by: chosen by a model's uncertainty (docs/dataset.md)
                         "targeted": "selected_by" in json.loads(f.attrs.get("source", "{}")),
                         "wall": float(f.attrs.get("wall_time_per_state_s", 0.0))})
    return rows


# Growth-label directories (dodo simulate --linear-only) and what their labels are.
LABEL_SETS = (("data/qke_linear", "random states, along the best of 24 coarse axes"),
              ("data/qke_growth", "the pool's states, along their refined fastest axis"),
              ("data/qke_emu_axis", "the pool's states, along the axis Emu's validation search picks"),
              ("data/qke_emu_axis_heldout", "the held-out states, the same axis; report only"))


def load_linear_labels(directory: str = "data/qke_linear") -> list[dict]:
    rows = []
    for path in sorted(Path(p) for p in glob.glob(str(ROOT / directory / "*.h5"))):
        with h5py.File(path, "r") as f:
            rows.append({"family": family_of(path), "n": len(f["linear_growthRate_box(1|s)"]),
                         "dropped": len(json.loads(f.attrs.get("dropped", "{}")))})
    return rows


def main(argv=None) -> int:
    # No options: --help (or any argument) ran the whole card and rewrote docs/dataset.md.
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    rows = load()
    families = sorted({r["family"] for r in rows})
    lines = [BEGIN, "", "| family | files | states (train) | of them targeted | states (held out) | dropped | "
             "mean wall s/state |", "|---|---|---|---|---|---|---|"]
    for family in families:
        part = [r for r in rows if r["family"] == family]
        train = sum(len(r["F_init"]) for r in part if not r["held_out"])
        held = sum(len(r["F_init"]) for r in part if r["held_out"])
        wall = np.mean([r["wall"] for r in part if r["wall"] > 0]) if any(r["wall"] > 0 for r in part) else 0.0
        targeted = sum(len(r["F_init"]) for r in part if r["targeted"])
        lines.append(f"| {family} | {len(part)} | {train} | {targeted} | {held} | {sum(r['dropped'] for r in part)} | "
                     f"{wall:.1f} |")
    total_train = sum(len(r["F_init"]) for r in rows if not r["held_out"])
    total_held = sum(len(r["F_init"]) for r in rows if r["held_out"])
    total_targeted = sum(len(r["F_init"]) for r in rows if r["targeted"])
    lines.append(f"| **all** | {len(rows)} | **{total_train}** | {total_targeted} | **{total_held}** | | |")
    lines += ["", "Growth-rate labels (linear theory only, `dodo simulate --linear-only`; docs/dataset.md):", "",
              "| labels | family | files | labelled states | dropped |", "|---|---|---|---|---|"]
    for directory, what in LABEL_SETS:
        labels = load_linear_labels(directory)
        for family in sorted({r["family"] for r in labels}):
            part = [r for r in labels if r["family"] == family]
            lines.append(f"| `{directory}` ({what}) | {family} | {len(part)} | {sum(r['n'] for r in part)} | "
                         f"{sum(r['dropped'] for r in part)} |")
        lines.append(f"| `{directory}` | **all** | {len(labels)} | **{sum(r['n'] for r in labels)}** | |")
    lines += ["", "![sampling](figures/dataset_sampling.png)", "", END]

    figures = ROOT / "docs/figures"
    figures.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    for family in families:
        F = np.concatenate([r["F_init"] for r in rows if r["family"] == family])
        final = np.concatenate([r["F_final"] for r in rows if r["family"] == family])
        growth = np.concatenate([r["growth"] for r in rows if r["family"] == family])
        n = F[..., 0]
        ntot = n.sum(axis=1)
        ff = np.linalg.norm(F[..., 1:], axis=-1) / np.maximum(n, 1e-300)
        box = dodo.box3d(F)
        delta_box = (box.F_box[:, 0, 0] - n[:, 0]) / ntot
        delta_true = (final[:, 0, 0] - n[:, 0]) / ntot
        unit = F[..., 1:] / np.maximum(np.linalg.norm(F[..., 1:], axis=-1, keepdims=True), 1e-300)
        alignment = np.sum(unit[:, 0] * unit[:, 3], axis=-1)
        kw = dict(alpha=0.5, label=family)
        axes[0, 0].hist(n[:, 3] / np.maximum(n[:, 0], 1e-300), bins=40, range=(0, 5), **kw)
        axes[0, 1].hist(ff.ravel(), bins=40, range=(0, 1), **kw)
        axes[0, 2].hist(alignment, bins=40, range=(-1, 1), **kw)
        axes[1, 0].hist((n[:, 1] + n[:, 2] + n[:, 4] + n[:, 5]) / ntot, bins=40, range=(0, 1), **kw)
        axes[1, 1].scatter(delta_box, delta_true, s=4, **kw)
        axes[1, 2].hist(np.log10(growth / ntot), bins=40, **kw)
    titles = ["n(nubar_e) / n(nu_e)", "flux factors (all species)", "cos angle(F_nu_e, F_nubar_e)",
              "heavy-lepton fraction of N_tot", "nu_e change: Box3D (x) vs solver (y), N_tot",
              "log10 growth rate / N_tot (s^-1 cm^3)"]
    for ax, title in zip(axes.ravel(), titles):
        ax.set_title(title, fontsize=10)
    axes[1, 1].plot([-0.3, 0.3], [-0.3, 0.3], "k-", lw=0.5)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    # Atomically, as the card: savefig in place left the committed figure torn when the write failed
    # (outside probe, round 23). The format is named: the temporary's name does not end in .png.
    with atomic_path(figures / "dataset_sampling.png") as temporary:
        fig.savefig(temporary, dpi=80, format="png")

    card = ROOT / "docs/dataset.md"
    text = card.read_text() if card.exists() else f"# Dataset\n\n{BEGIN}\n{END}\n"
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    with atomic_path(card) as temporary:  # a failed run leaves the card whole
        temporary.write_text(text[:start] + "\n".join(lines) + text[stop:])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
