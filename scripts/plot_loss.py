#!/usr/bin/env python3
"""Plots mc_train_gpu loss curves (loss.csv) as PNG: train loss per logged step, validation loss
per evaluation. Needs Debian's python3-matplotlib (docs only; the build never runs this).

usage: plot_loss.py OUT.png LABEL=loss.csv [LABEL=loss.csv ...]
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    out = sys.argv[1]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for spec in sys.argv[2:]:
        label, path = spec.split("=", 1)
        steps, train, vsteps, valid = [], [], [], []
        with open(path) as f:
            for row in csv.DictReader(f):
                s = int(row["step"])
                if row["train_loss"]:
                    steps.append(s)
                    train.append(float(row["train_loss"]))
                if row["valid_loss"]:
                    vsteps.append(s)
                    valid.append(float(row["valid_loss"]))
        line = ax.plot(steps, train, alpha=0.35, linewidth=0.8, label=f"{label}: train (batch)")[0]
        ax.plot(vsteps, valid, marker="o", markersize=3, color=line.get_color(),
                label=f"{label}: validation")
    ax.set_xlabel("optimizer step (16 x 1024 tokens)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_ylim(1.5, 6)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("MegaContext base model (13.8M parameters) on the H100")
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main()
