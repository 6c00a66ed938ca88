"""``qa-gateway``: serve the gateway, ask it a question, or run the emulator on its own."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qa-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the gateway over HTTP")
    serve.add_argument("--config", help="TOML file (default: $QA_CONFIG or the embedded default)")
    serve.add_argument("--host", default=os.environ.get("QA_HOST", "0.0.0.0"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))

    emulate = commands.add_parser(
        "emulate", help="serve the Google API emulator (gRPC, and Gemini's REST API)"
    )
    emulate.add_argument("--host", default="127.0.0.1")
    emulate.add_argument("--port", type=int, default=50051, help="gRPC port")
    emulate.add_argument("--rest-port", type=int, default=8090, help="REST port")
    emulate.add_argument("--chunks", type=int, default=8, help="pieces per answer")
    emulate.add_argument("--delay-ms", type=float, default=0.0, help="pause between chunks")
    emulate.add_argument("--first-delay-ms", type=float, default=0.0, help="pause before the first")
    emulate.add_argument("--fail-first", type=int, default=0, help="fail the first N calls")
    emulate.add_argument("--fail-code", default="UNAVAILABLE", help="gRPC status of failures")
    emulate.add_argument("--fail-after", type=int, help="abort every call after K chunks")
    emulate.add_argument("--hang", action="store_true", help="never send the first chunk")
    emulate.add_argument(
        "--cumulative", action="store_true", help="Agent Builder: send the answer so far each time"
    )

    ask = commands.add_parser("ask", help="stream an answer from a running gateway")
    ask.add_argument("query", help="the question")
    ask.add_argument("--backend", help="a configured backend (default: the gateway's default)")
    ask.add_argument("--url", default=os.environ.get("QA_URL", "http://127.0.0.1:8080"))
    ask.add_argument(
        "--session", help="continue this session (Agent Builder, Agent Engine backends)"
    )
    ask.add_argument(
        "--api-key", default=os.environ.get("QA_API_KEY"), help="key or token (or $QA_API_KEY)"
    )

    keys = commands.add_parser("keys", help="make API keys")
    keys_new = keys.add_subparsers(dest="keys", required=True).add_parser(
        "new", help="print a fresh key, and the [[auth.keys]] table holding its hash"
    )
    keys_new.add_argument("--name", default="client", help="who the key is for")
    keys_new.add_argument("--tenant", default="default", help="whose answers it shares")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "ask":
        return _ask(args)
    if args.command == "keys":
        return _new_key(args)
    return _emulate(args)


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the Google SDKs take seconds to load, which `ask` need not pay.
    from gateway.settings import ConfigError, load_settings

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"qa-gateway: {exc}", file=sys.stderr)
        return 2
    from gateway.app import create_app
    from gateway.http.auth import warn_if_open
    from gateway.server import GatewayServer

    tune_collector()
    # The log lines name no source line, thread or process: skip finding them per record.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    app = create_app(settings)
    server = GatewayServer(app, args.host, args.port, settings.shutdown_grace_s, settings.server)
    warn_if_open(settings.auth, args.host)  # once logging is set up
    server.run()
    return 0


def tune_collector() -> None:
    """Tune the garbage collector for a process serving streams (the tests run the same).

    Start-up leaves ~100 MB of long-lived objects (the SDKs, protobuf descriptors): they are
    moved out of the collector's reach, so a full collection no longer walks them (100-220 ms
    with 1,000 open streams), and the young generation fills before it is collected: reference
    counting frees a request's objects (it leaves no cycles: test_garbage.py). What survives
    (an open stream's objects) lands in the middle generation, collected every 5 young
    collections, not 50: each walk of it pauses every stream (~200 ms with 1,000 open at 50,
    ~55 ms at 5), and full collections stay as rare as before.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 5, 1_000)


def _ask(args: argparse.Namespace) -> int:
    from gateway.client import ClientError, print_answer

    try:
        print_answer(args.url, args.query, args.backend, args.session, sys.stdout, args.api_key)
    except ClientError as exc:
        print(f"qa-gateway: {exc}", file=sys.stderr)
        return 1
    return 0


def _new_key(args: argparse.Namespace) -> int:
    from gateway.http.keys import hash_key, key_table, new_key

    key = new_key()
    print("# The key, for the client (shown once; the gateway keeps only its hash):")
    print(key)
    print("# The config entry:")
    print(key_table(args.name, args.tenant, hash_key(key)), end="")
    return 0


def _emulate(args: argparse.Namespace) -> int:
    import grpc

    from backends.emulator import Behaviour, Emulator

    if args.fail_code not in grpc.StatusCode.__members__:
        print(f"qa-gateway: unknown gRPC status {args.fail_code!r}", file=sys.stderr)
        return 2
    behaviour = Behaviour(
        chunks=args.chunks,
        delay_ms=args.delay_ms,
        first_delay_ms=args.first_delay_ms,
        fail_first=args.fail_first,
        fail_code=args.fail_code,
        fail_after=args.fail_after,
        hang_after=0 if args.hang else None,
        cumulative=args.cumulative,
    )

    async def run() -> None:
        emulator = await Emulator(behaviour).start(args.host, args.port, args.rest_port)
        print(
            f"emulator listening on {args.host}:{emulator.port} (gRPC)"
            f" and {args.host}:{emulator.rest_port} (REST)",
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await emulator.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
