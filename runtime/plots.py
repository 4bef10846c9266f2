"""`sdqkd plot keyrate|topology`: pictures for the README, drawn from the running code.

keyrate: secret key rate vs fibre length for a device profile — the simulated link through the
whole finite-key pipeline (points), the analytic asymptotic decoy-state model and the PLOB
repeaterless bound (lines). topology: the network with per-link rates (live from a harness
network's controller status, or the analytic rate of each link when none runs)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdqkd.errors import MissingExtra


def require() -> None:
    """MissingExtra unless matplotlib (the `plot` extra) is installed."""
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        raise MissingExtra("sdqkd plot", "plot", "matplotlib") from None


def _plt() -> Any:
    require()
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def simulated_rate(profile: str, km: float, max_block_s: float = 300.0, seed: int = 1,
                   sifted_bits: float = 1e7) -> float:
    """Final key bits per second of link time through the whole pipeline (0 when none)."""
    from sdqkd.engine import keyrate, pipeline, profiles
    from sdqkd.engine.auth import Authenticator, BufferKeySource

    p = profiles.get(profile)
    loss = keyrate.fibre_loss_db(km, p.alpha_db_per_km)
    pulses = min(pipeline.pulses_for(profile, loss, sifted_bits), int(max_block_s * p.clock_hz))
    cfg = pipeline.BlockConfig(profile=profile, loss_db=loss, n_pulses=pulses, seed=seed)
    k = os.urandom(1 << 20)
    a, _b = pipeline.run_local(cfg, Authenticator(BufferKeySource(k), "alice"), Authenticator(BufferKeySource(k), "bob"))
    return a.key_bits / cfg.duration_s if a.status == "ok" else 0.0


# Simulated points: the default is quick (about 10 s on 2 busy cores: 1e6-bit blocks every 20 km, where
# finite-key effects cost some rate and reach); --accurate draws the README figure (1e7-bit
# blocks every 10 km, about a minute).
FAST = {"sifted_bits": 1e6, "max_block_s": 30.0, "step_km": 20}
ACCURATE = {"sifted_bits": 1e7, "max_block_s": 300.0, "step_km": 10}


def stderr_progress(done: int, total: int, km: float) -> None:
    """One line per simulated point, rewritten in place on a terminal."""
    end = "\r" if sys.stderr.isatty() and done < total else "\n"
    print(f"  simulating the link at {km:.0f} km ({done}/{total})", end=end, file=sys.stderr, flush=True)


def plot_keyrate(out: Path, profile: str = "commercial", km_max: float = 200.0, *, accurate: bool = False,
                 progress: Callable[[int, int, float], None] | None = None) -> list[dict[str, float]]:
    from sdqkd.engine import keyrate

    mode = ACCURATE if accurate else FAST
    plt = _plt()
    fine = [x * 2.0 for x in range(int(km_max / 2) + 1)]
    rows = keyrate.rate_vs_distance(profile, fine)
    sim_km = list(range(0, int(km_max) + 1, int(mode["step_km"])))
    sim = []
    for i, km in enumerate(sim_km):
        if progress is not None:
            progress(i + 1, len(sim_km), km)
        sim.append((km, simulated_rate(profile, km, mode["max_block_s"], sifted_bits=mode["sifted_bits"])))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.semilogy([r["km"] for r in rows], [r["plob_bps"] for r in rows], "k--", label="PLOB bound (repeaterless)")
    ax.semilogy([r["km"] for r in rows if r["asymptotic_bps"] > 0], [r["asymptotic_bps"] for r in rows
                if r["asymptotic_bps"] > 0], "C0-", label="decoy BB84, asymptotic (GLLP)")
    ax.semilogy([k for k, r in sim if r > 0], [r for k, r in sim if r > 0], "C3o",
                label=f"simulated link, finite key (blocks <= {mode['sifted_bits']:.0e} sifted bits, "
                      f"<= {mode['max_block_s']:.0f} s)")
    ax.set_xlabel("fibre length (km, 0.2 dB/km)")
    ax.set_ylabel("secret key rate (bit/s)")
    ax.set_title(f"sdqkd engine, profile '{profile}' (1 GHz)")
    ax.set_ylim(1e1, 1e10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return [{"km": k, "simulated_bps": r} for k, r in sim]


def plot_topology(out: Path, topology: str | None = None, state_dir: str | None = None) -> str:
    """Draw the network; returns where the rates came from ("live rates", "model rates", ...).
    A state dir of a stopped network gives its last rates, labelled as such, not as live."""
    from sdqkd.controller import topology as tp
    from sdqkd.engine import keyrate, profiles

    plt = _plt()
    live: dict[str, Any] = {}
    how = "model"
    if state_dir:
        sd = Path(state_dir)
        if not (sd / "network.json").exists():
            raise tp.TopologyError(f"{state_dir}: not a network's state directory (no network.json)")
        desc = json.loads((sd / "network.json").read_text())
        topo = tp.parse(desc["topology_data"], desc["topology"], files=sd)
        status_file = sd / "controller-status.json"
        if status_file.exists():
            live = {r["link"]: r for r in json.loads(status_file.read_text())["links"]}
            how = "live" if (sd / "pids.json").exists() else "last seen"
    elif topology:
        topo = tp.load(topology)
    else:
        from sdqkd.demo import DEFAULT_TOPOLOGY

        topo = tp.parse(DEFAULT_TOPOLOGY, "embedded demo topology")
    names = list(topo.nodes)
    pos = {n: (math.cos(2 * math.pi * i / len(names)), math.sin(2 * math.pi * i / len(names))) for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    for link in topo.links:
        (x1, y1), (x2, y2) = pos[link.a], pos[link.b]
        row = live.get(f"{link.a}-{link.b}")
        if row and row.get("skr") not in (None, ""):
            rate, src = float(row["skr"]), how
        else:
            p = profiles.get(link.profile)
            rate, src = keyrate.asymptotic(link.profile, link.loss_db) * p.clock_hz, "model"
        ax.plot([x1, x2], [y1, y2], "-", color="C0", lw=1 + 3 * min(1.0, rate / 2e6))
        label = f"{link.km:.0f} km, {rate / 1e6:.2f} Mb/s" if rate >= 1e5 else f"{link.km:.0f} km, {rate / 1e3:.1f} kb/s"
        ax.text((x1 + x2) / 2, (y1 + y2) / 2, f"{label}\n({src})", fontsize=7, ha="center",
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
    for n, (x, y) in pos.items():
        saes = [s for s, sae in topo.saes.items() if sae.node == n]
        ax.scatter([x], [y], s=500, color="C1", zorder=3)
        ax.text(x, y - 0.16, n + (f"\n{', '.join(saes)}" if saes else ""), ha="center", va="top", fontsize=8)
    ax.set_axis_off()
    ax.set_title(f"{topo.extra.get('name', 'network')}: per-link secret key rate")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return f"{how} rates" if live else "model rates"
