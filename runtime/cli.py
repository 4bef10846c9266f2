"""The `sdqkd` command line."""

from __future__ import annotations

import argparse
import sys


def _gen(args: argparse.Namespace) -> int:
    from codegen.cli import run
    from runtime.errors import MissingExtra

    try:
        return run(args)
    except ModuleNotFoundError as e:
        print(MissingExtra("sdqkd gen", "gen", e.name or str(e)), file=sys.stderr)
        return 2


def _bench(args: argparse.Namespace) -> int:
    from runtime import bench

    if not args.name:
        print("benchmarks:", ", ".join(bench.available()))
        return 0
    return bench.run(args.name, args.rest)


def _demo(args: argparse.Namespace) -> int:
    from runtime.demo import main

    return main(seconds=args.seconds)


def _node(args: argparse.Namespace) -> int:
    from runtime.node import main

    return main(args.config)


def _controller(args: argparse.Namespace) -> int:
    from runtime.controller.service import main

    return main(args.state_dir)


def _net(args: argparse.Namespace) -> int:
    import json

    from runtime.controller.topology import TopologyError
    from runtime.harness import network

    try:
        if args.action == "up":
            from runtime.demo import DEFAULT_TOPOLOGY

            # no TOPOLOGY: the demo's metro network (README's first key example)
            eps = network.up(args.topology or DEFAULT_TOPOLOGY, args.state_dir, timeout=args.timeout,
                             netns=args.netns)
            print(json.dumps(eps, indent=2))
            print(f"network up; endpoints in {args.state_dir}/endpoints.json", file=sys.stderr)
        else:
            stopped = network.down(args.state_dir)
            print(f"stopped {len(stopped)} process(es): {', '.join(stopped)}")
    except (TopologyError, network.HarnessError) as e:
        print(e, file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a read-only or full state dir: one line, no traceback
        print(f"sdqkd net {args.action}: {args.state_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from runtime import plots
    from runtime.errors import MissingExtra

    out = Path(args.out or f"{args.what}.png")
    try:
        plots.require()
    except MissingExtra as e:
        print(e, file=sys.stderr)
        return 2
    if args.what == "keyrate":
        rows = plots.plot_keyrate(out, args.profile)
        print(f"wrote {out}; simulated points: " + ", ".join(f"{r['km']:.0f} km {r['simulated_bps']:.3g} b/s"
                                                             for r in rows))
    else:
        plots.plot_topology(out, args.topology, args.state_dir)
        print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from codegen.cli import add_arguments

    p = argparse.ArgumentParser(prog="sdqkd", description="Software-defined QKD networks driven by standard models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    g = sub.add_parser("gen", help="regenerate generated/ from models/")
    add_arguments(g)
    g.set_defaults(func=_gen)
    b = sub.add_parser("bench", help="run a benchmark (sdqkd bench NAME [--json])")
    b.add_argument("name", nargs="?", help="benchmark name; none lists them")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=_bench)
    n = sub.add_parser("node", help="run one SD-QKD node (gNMI agent; LKMS and engine as they land)")
    n.add_argument("--config", required=True, help="node config YAML")
    n.set_defaults(func=_node)
    c = sub.add_parser("controller", help="run the SDN controller of a harness network")
    c.add_argument("--state-dir", required=True)
    c.set_defaults(func=_controller)
    nt = sub.add_parser("net", help="start or stop a whole network (one process per node + controller)")
    nt.add_argument("action", choices=["up", "down"])
    nt.add_argument("topology", nargs="?", help="topology YAML (for up; default: the demo's metro network)")
    nt.add_argument("--state-dir", required=True)
    nt.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all links to produce key")
    nt.add_argument("--netns", action="store_true", help="each node in its own network namespace (root)")
    nt.set_defaults(func=_net)
    pl = sub.add_parser("plot", help="draw keyrate-vs-distance or the network as a PNG")
    pl.add_argument("what", choices=["keyrate", "topology"])
    pl.add_argument("--out", help="PNG file (default: WHAT.png)")
    pl.add_argument("--profile", default="commercial")
    pl.add_argument("--topology", help="topology file (topology plot; default: the demo network)")
    pl.add_argument("--state-dir", help="a running harness network: live rates (topology plot)")
    pl.set_defaults(func=_plot)
    d = sub.add_parser("demo", help="the main job on the embedded default")
    d.add_argument("--seconds", type=float, default=60.0, help="stop after this long (default 60)")
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
