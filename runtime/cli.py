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

    return main(args.config, args.log_format)


def _health(args: argparse.Namespace) -> int:
    from runtime.node.health import main

    return main(args.config, args.timeout)


def _controller(args: argparse.Namespace) -> int:
    from runtime.controller.service import main

    return main(args.state_dir, args.config, args.api, args.log_format)


def _net(args: argparse.Namespace) -> int:
    import json

    from runtime.controller.topology import TopologyError
    from runtime.harness import network

    if args.action == "export":
        return _export(args)
    try:
        if args.action == "up":
            if not args.state_dir:
                print("sdqkd net up: --state-dir required", file=sys.stderr)
                return 2
            from runtime.demo import DEFAULT_TOPOLOGY

            # no TOPOLOGY: the demo's metro network (README's first key example)
            eps = network.up(args.topology or DEFAULT_TOPOLOGY, args.state_dir, timeout=args.timeout,
                             netns=args.netns)
            print(json.dumps(eps, indent=2))
            print(f"network up; endpoints in {args.state_dir}/endpoints.json", file=sys.stderr)
        else:
            if not args.state_dir:
                print("sdqkd net down: --state-dir required", file=sys.stderr)
                return 2
            stopped = network.down(args.state_dir)
            print(f"stopped {len(stopped)} process(es): {', '.join(stopped)}")
    except (TopologyError, network.HarnessError) as e:
        print(e, file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a read-only or full state dir: one line, no traceback
        print(f"sdqkd net {args.action}: {args.state_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


def _export(args: argparse.Namespace) -> int:
    from runtime.controller.topology import TopologyError
    from runtime.deploy import export
    from runtime.deploy.plan import ExportError, ExportOptions

    if not args.topology or not args.format or not args.out:
        print("sdqkd net export: TOPOLOGY, --format and --out are required", file=sys.stderr)
        return 2
    hosts: dict[str, str] = {}
    for h in args.host or []:
        name, sep, addr = h.partition("=")
        if not sep or not name or not addr:
            print(f"sdqkd net export: --host {h!r}: expected NAME=ADDRESS", file=sys.stderr)
            return 2
        hosts[name] = addr
    opts = ExportOptions(hosts=hosts, listen_host=args.listen, namespace=args.namespace or "",
                         cluster_domain=args.cluster_domain, mgmt_subnet=args.mgmt_subnet, image=args.image,
                         log_format=args.log_format or ("text" if args.format == "bundle" else "json"))
    try:
        summary = export(args.topology, args.format, args.out, opts)
    except (TopologyError, ExportError) as e:
        print(e, file=sys.stderr)
        return 2
    except OSError as e:
        print(f"sdqkd net export: cannot write {args.out}: {e}; nothing written", file=sys.stderr)
        return 1
    print(summary)
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
    n.add_argument("--log-format", choices=["text", "json"], help="log lines on stdout (default: the config's)")
    n.set_defaults(func=_node)
    h = sub.add_parser("health", help="gRPC health check of a running node (exit 0 = SERVING)")
    h.add_argument("--config", required=True, help="the node's config YAML")
    h.add_argument("--timeout", type=float, default=5.0)
    h.set_defaults(func=_health)
    c = sub.add_parser("controller", help="run the SDN controller of a network")
    c.add_argument("--state-dir", required=True, help="writable: controller-status.json (and network.json)")
    c.add_argument("--config", help="network description (default: STATE_DIR/network.json)")
    c.add_argument("--api", default="127.0.0.1:0", help="loopback HOST:PORT of the northbound API")
    c.add_argument("--log-format", choices=["text", "json"], default="text")
    c.set_defaults(func=_controller)
    nt = sub.add_parser("net", help="start, stop or export a whole network (one process per node + controller)")
    nt.add_argument("action", choices=["up", "down", "export"])
    nt.add_argument("topology", nargs="?", help="topology YAML (up: default the demo's metro network; export)")
    nt.add_argument("--state-dir", help="state directory (up, down)")
    nt.add_argument("--format", choices=["bundle", "containerlab", "kubernetes"], help="export: what to write")
    nt.add_argument("--out", help="export: output directory (must not exist, or be empty)")
    nt.add_argument("--host", action="append", metavar="NAME=ADDRESS",
                    help="export: host name or IP of a node (bundle; containerlab: its management IPv4)")
    nt.add_argument("--listen", default="0.0.0.0",
                    help="export (bundle): address nodes bind: 0.0.0.0 (default), ::, or 'host' = its own address")
    nt.add_argument("--namespace", help="export (kubernetes): namespace (default: topology name, else sdqkd)")
    nt.add_argument("--cluster-domain", default="cluster.local", help="export (kubernetes)")
    nt.add_argument("--mgmt-subnet", default="172.20.20.0/24", help="export (containerlab): management subnet")
    nt.add_argument("--image", default="sdqkd:0.1.0", help="export (containerlab, kubernetes): node image")
    nt.add_argument("--log-format", choices=["text", "json"], help="export: nodes' log format")
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
