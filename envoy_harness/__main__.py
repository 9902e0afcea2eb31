"""Command line (used by the benchmark to keep the replicas off the client's GIL):

    python -m envoy_harness replicas --count 3   # prints {"endpoints": [...]}
"""

import argparse
import json
import sys

from .bootstrap import FALLBACK_POLICIES, EnvoyConfig
from .replicas import ReplicaSet


def _serve_replicas(count):
    replicas = ReplicaSet.start(count)
    print(json.dumps({"endpoints": replicas.endpoints}), flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    except KeyboardInterrupt:
        pass
    replicas.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Envoy test harness")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("replicas", help="serve N replicas until stdin closes")
    rep.add_argument("--count", type=int, default=3)
    cfg = sub.add_parser("config", help="print a bootstrap for the given upstreams")
    cfg.add_argument("endpoints", nargs="+")
    cfg.add_argument("--wasm")
    cfg.add_argument("--plugin-config", default='{"lb_policy": "header"}')
    cfg.add_argument("--listener-port", type=int, default=10000)
    cfg.add_argument("--admin-port", type=int, default=9901)
    cfg.add_argument("--fallback", default="round_robin", choices=sorted(FALLBACK_POLICIES))
    args = parser.parse_args(argv)
    if args.command == "replicas":
        _serve_replicas(args.count)
    else:
        config = EnvoyConfig.simple(args.endpoints, args.wasm, args.plugin_config,
                                    fallback_policy=args.fallback,
                                    listener_port=args.listener_port, admin_port=args.admin_port)
        print(json.dumps(config.render(), indent=1))


if __name__ == "__main__":
    main()
