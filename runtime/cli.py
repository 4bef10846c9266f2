"""The `sdqkd` command line (reference: docs/cli.md).

Each subcommand is one `_add_NAME(sub)` function that declares its parser (a description and an
example in its help) and one `_NAME(args)` function that runs it; `build_parser` lists them.
To add a subcommand, write both and add the first to `SUBCOMMANDS` (for a `net` action, to
`NET_ACTIONS`). Errors users can cause exit 2 with a one-line message, never a traceback."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from importlib import metadata

from sdqkd.argtypes import number
from sdqkd.interrupts import as_ctrl_c


def _version() -> str:
    try:
        return metadata.version("sdqkd")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str,
            description: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its description and examples."""
    return sub.add_parser(name, help=summary, description=description,
                          epilog="examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


# ------------------------------------------------------------------ gen


def _gen(args: argparse.Namespace) -> int:
    from sdqkd.codegen.cli import run

    return run(args)  # (it says which extra is missing, as `python -m sdqkd.codegen` does)


def _add_gen(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from sdqkd.codegen.cli import add_arguments

    g = _parser(sub, "gen", "regenerate generated/ from models/ (YANG and protobuf)",
                "Compile models/yang and models/proto into generated/ (bindings, paths, agent skeleton, "
                "client, stubs).\nDeterministic; a failed run leaves generated/ as it was. Needs the 'gen' "
                "extra (pyang, pyangbind, grpcio-tools):\npip install '.[gen]' in the clone.",
                "sdqkd gen\nsdqkd gen --check          # exit 1 naming every out-of-date file")
    add_arguments(g)
    g.set_defaults(func=_gen)


# ------------------------------------------------------------------ bench


def _bench(args: argparse.Namespace) -> int:
    from sdqkd import bench

    if not args.name:
        print("benchmarks:", ", ".join(bench.available()))
        return 0
    return bench.run(args.name, args.rest)


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from sdqkd import bench

    # the list comes from the package (modules with a `main`), so a new benchmark shows up here
    b = _parser(sub, "bench", "run a benchmark and print its medians",
                f"Run one benchmark ({', '.join(bench.available())}); figures are medians, "
                "speed targets are checked here.", "sdqkd bench               # list them\nsdqkd bench kms --json")
    b.add_argument("name", nargs="?", help="benchmark name; none lists them")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark")
    b.set_defaults(func=_bench)


# ------------------------------------------------------------------ node, controller


def _node(args: argparse.Namespace) -> int:
    from sdqkd.node import main

    return main(args.config, args.log_format)


def _add_node(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    n = _parser(sub, "node", "run one SD-QKD node (gNMI agent, LKMS with ETSI 014/004, QKD engine)",
                "Run one node until SIGTERM or Ctrl-C. The config format is docs/node-config.md; it is "
                "checked whole before anything starts.",
                "sdqkd node --config lab/nodes/B/node.yaml   # restart a node of a `net up` network")
    n.add_argument("--config", required=True, metavar="FILE", help="node config YAML")
    n.add_argument("--log-format", choices=["text", "json"], help="log lines on stdout (default: the config's `log`)")
    n.set_defaults(func=_node)


def _health(args: argparse.Namespace) -> int:
    from sdqkd.node.health import main

    return main(args.config, args.timeout)


def _add_health(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    h = _parser(sub, "health", "gRPC health check of a running node (exit 0 = SERVING)",
                "Ask the node of FILE for its gRPC health status over its gNMI port, with its own "
                "credentials (container liveness and readiness probes).",
                "sdqkd health --config /etc/sdqkd/node.yaml --timeout 2")
    h.add_argument("--config", required=True, metavar="FILE", help="the node's config YAML")
    h.add_argument("--timeout", type=number(0, strict=True), default=5.0, help="seconds to wait for an answer (default 5)")
    h.set_defaults(func=_health)


def _controller(args: argparse.Namespace) -> int:
    from sdqkd.controller.service import main

    return main(args.state_dir, args.config, args.api, args.log_format)


def _add_controller(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = _parser(sub, "controller", "run the SDN controller of a network prepared by `net up`",
                "Run the controller of DIR (normally started by `sdqkd net up`); its northbound API "
                "is docs/controller-api.md. Deployed across hosts (docs/deploy.md): --config names the "
                "exported controller/network.json.",
                "sdqkd controller --state-dir lab\n"
                "sdqkd controller --state-dir /var/lib/sdqkd --config controller/network.json --log-format json")
    c.add_argument("--state-dir", required=True, metavar="DIR", help="writable: controller-status.json")
    c.add_argument("--config", metavar="FILE", help="network description (default: DIR/network.json)")
    c.add_argument("--api", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="loopback address of the northbound API (default 127.0.0.1:0)")
    c.add_argument("--log-format", choices=["text", "json"], default="text", help="log lines on stdout")
    c.set_defaults(func=_controller)


# ------------------------------------------------------------------ net


def _net_up(args: argparse.Namespace) -> int:
    from sdqkd.harness import netcli

    return netcli.up(args.topology, args.state_dir, timeout=args.timeout, netns=args.netns,
                     controller=not args.no_controller)


def _net_down(args: argparse.Namespace) -> int:
    from sdqkd.harness import netcli

    return netcli.down(args.state_dir)


def _net_status(args: argparse.Namespace) -> int:
    from sdqkd.harness import netcli

    return netcli.status(args.state_dir)


def _net_export(args: argparse.Namespace) -> int:
    from sdqkd.controller.topology import TopologyError
    from sdqkd.deploy import export
    from sdqkd.deploy.plan import ExportError, ExportOptions

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


def _add_net_up(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _parser(sub, "up", "start a network from a topology file (default: the demo's metro network)",
                "Check TOPOLOGY (docs/topology.md), write a PKI and node configs under DIR, start one "
                "process per node and the controller,\nand return when every link produces key, "
                "with DIR/endpoints.json written (docs/endpoints.md). Without TOPOLOGY: the demo's network.",
                "sdqkd net up lab.yaml --state-dir lab\nsdqkd net up --state-dir net          # the demo's metro network\n"
                "sudo sdqkd net up lab.yaml --state-dir lab --netns\n"
                "sdqkd net up lab.yaml --state-dir lab --no-controller   # TeraFlowSDN makes the links (docs/restconf.md)")
    p.add_argument("topology", metavar="TOPOLOGY", nargs="?", help="topology YAML (default: the demo's metro network)")
    p.add_argument("--state-dir", required=True, metavar="DIR", help="where the network's files live")
    p.add_argument("--timeout", type=number(0, strict=True), default=120.0, help="seconds to wait for every link (default 120)")
    p.add_argument("--netns", action="store_true", help="each node in its own network namespace (needs root)")
    p.add_argument("--no-controller", action="store_true",
                   help="start the nodes only, with no links: another SDN controller (e.g. TeraFlowSDN over "
                        "RESTCONF) makes them; return once every node listens")
    p.set_defaults(func=_net_up)


def _add_net_down(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _parser(sub, "down", "stop every process of a network",
                "Stop the nodes and the controller of DIR, including a node restarted by hand with "
                "`sdqkd node --config DIR/nodes/NAME/node.yaml`.", "sdqkd net down --state-dir lab")
    p.add_argument("--state-dir", required=True, metavar="DIR")
    p.set_defaults(func=_net_down)


def _add_net_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _parser(sub, "status", "print a network's links, nodes and applications",
                "Print the controller's view of DIR: per link km, dB, QBER, secret key rate and stored "
                "keys; per node up or down; the applications and their paths.",
                "sdqkd net status --state-dir lab\nwatch -n 2 sdqkd net status --state-dir lab")
    p.add_argument("--state-dir", required=True, metavar="DIR")
    p.set_defaults(func=_net_status)


def _add_net_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = _parser(sub, "export", "write a network for other hosts: bundle, containerlab or Kubernetes",
                "From TOPOLOGY, write what `net up` would build (PKI, node configs, bootstrap secrets, the "
                "controller's config) into DIR,\nfor running across hosts: a directory per node (bundle), a "
                "containerlab topology, or Kubernetes manifests (docs/deploy.md).\n"
                "bundle: every node needs an address (--host NAME=ADDRESS, or `host:` in the topology).\n"
                "containerlab, kubernetes: containers and objects are named after the nodes, so node names "
                "must be DNS labels\n(lowercase letters, digits, '-': alice, not A); the quickstart's lab.yaml "
                "exports as a bundle only.",
                "sdqkd net export lab.yaml --format bundle --out lab-bundle --host A=10.0.0.1 --host B=10.0.0.2 "
                "--host C=10.0.0.3\n"
                "sdqkd net export metro.yaml --format containerlab --out metro-lab   # nodes alice, bob, ...\n"
                "sdqkd net export metro.yaml --format kubernetes --out metro-k8s --namespace qkd")
    p.add_argument("topology", metavar="TOPOLOGY", help="topology YAML (docs/topology.md)")
    p.add_argument("--format", required=True, choices=["bundle", "containerlab", "kubernetes"], help="what to write")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist, or be empty)")
    p.add_argument("--host", action="append", metavar="NAME=ADDRESS",
                   help="host name or IP of a node (bundle; containerlab: its management IPv4); repeatable")
    p.add_argument("--listen", default="0.0.0.0", choices=["0.0.0.0", "::", "host"],
                   help="bundle: address nodes bind: 0.0.0.0 (default), ::, or 'host' = each node its own address")
    p.add_argument("--namespace", help="kubernetes: namespace (default: the topology's name, else sdqkd)")
    p.add_argument("--cluster-domain", default="cluster.local", help="kubernetes: cluster DNS domain")
    p.add_argument("--mgmt-subnet", default="172.20.20.0/24", help="containerlab: management subnet")
    p.add_argument("--image", default="sdqkd:0.1.0", help="containerlab, kubernetes: the node image")
    p.add_argument("--log-format", choices=["text", "json"],
                   help="nodes' log format (default: text for bundle, json otherwise)")
    p.set_defaults(func=_net_export)


NET_ACTIONS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_net_up, _add_net_down, _add_net_status, _add_net_export]


def _add_net(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    nt = _parser(sub, "net", "start, inspect or stop a whole network (one process per node + controller)",
                 "A network of real processes on this machine (docs/quickstart.md), or exported for other hosts "
                 "(docs/deploy.md).",
                 "sdqkd net up lab.yaml --state-dir lab\nsdqkd net status --state-dir lab\n"
                 "sdqkd net down --state-dir lab")
    actions = nt.add_subparsers(dest="action", required=True, metavar="ACTION")
    for add in NET_ACTIONS:
        add(actions)


# ------------------------------------------------------------------ plot, demo


def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sdqkd import plots
    from sdqkd.controller.topology import TopologyError
    from sdqkd.errors import MissingExtra

    out = Path(args.out or f"{args.what}.png")
    try:
        plots.require()
    except MissingExtra as e:
        print(e, file=sys.stderr)
        return 2
    if args.what == "topology":
        try:
            how = plots.plot_topology(out, args.topology, args.state_dir)
        except TopologyError as e:
            print(e, file=sys.stderr)
            return 2
        print(f"wrote {out} ({how})")
    else:
        rows = plots.plot_keyrate(out, args.profile, accurate=args.accurate, progress=plots.stderr_progress)
        print(f"wrote {out}; simulated points: " + ", ".join(f"{r['km']:.0f} km {r['simulated_bps']:.3g} b/s"
                                                             for r in rows))
    return 0


def _add_plot(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from sdqkd.engine.profiles import PROFILES

    pl = _parser(sub, "plot", "draw key rate vs distance, or a network, as a PNG",
                 "keyrate: the simulated link through the whole finite-key pipeline beside the analytic "
                 "model and the PLOB bound\n(about 10 s; --accurate runs the README's larger blocks, "
                 "about a minute).\ntopology: a network with per-link rates: the model's, or the live "
                 "rates of a running network (--state-dir).\nNeeds the 'plot' extra (matplotlib): "
                 "pip install '.[plot]' in the clone, or pip install 'sdqkd[plot]'.",
                 "sdqkd plot keyrate --out keyrate.png\nsdqkd plot keyrate --profile snspd --accurate\n"
                 "sdqkd plot topology --topology lab.yaml\nsdqkd plot topology --state-dir lab")
    pl.add_argument("what", choices=["keyrate", "topology"])
    pl.add_argument("--out", help="PNG file (default: WHAT.png)")
    pl.add_argument("--profile", default="commercial", choices=sorted(PROFILES), help="device profile (keyrate)")
    pl.add_argument("--accurate", action="store_true",
                    help="keyrate: blocks up to 1e7 sifted bits (the README figure; about a minute)")
    pl.add_argument("--topology", metavar="FILE", help="topology file (topology plot; default: the demo network)")
    pl.add_argument("--state-dir", metavar="DIR", help="a harness network: its controller's rates (topology plot)")
    pl.set_defaults(func=_plot)


def _demo(args: argparse.Namespace) -> int:
    from sdqkd.demo import main

    return main(seconds=args.seconds, keep=args.keep)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = _parser(sub, "demo", "the main job: a metro QKD network, an end-to-end key over a relay",
                "Start the embedded 5-node metro network as processes, show its links come up, fetch an "
                "end-to-end key over a three-hop\nrelay with ETSI 014 at both ends, stop. Its state "
                "directory is removed afterwards unless --keep DIR.",
                "sdqkd demo\nsdqkd demo --keep demo-state     # then: sdqkd net status --state-dir demo-state")
    d.add_argument("--seconds", type=number(0, strict=True), default=60.0, help="give up after this long (default 60)")
    d.add_argument("--keep", metavar="DIR", help="keep the network's state (PKI, keys, logs) in DIR")
    d.set_defaults(func=_demo)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_demo, _add_net, _add_node, _add_health, _add_controller, _add_plot, _add_gen, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sdqkd", description="Software-defined QKD networks driven by standard models "
        "(ETSI GS QKD 015 over gNMI, ETSI 014/004 key delivery).",
        epilog="start here: sdqkd demo; then docs/quickstart.md. Each command has --help with examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"sdqkd {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `kill` cleans up as Ctrl-C does: `net up` interrupted while it starts stopped its processes
    # on Ctrl-C but left them all running on SIGTERM (a node or controller replaces this with its
    # own graceful handler once its event loop runs)
    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, as_ctrl_c) if main_thread else None
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, before)


if __name__ == "__main__":
    sys.exit(main())
