"""`tokenweight serve`: host one scorer (--model) or several (--config) over gRPC and HTTP."""

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys

from tokenweight.flags import add_flags, values_of

from .auth import TOKEN_ENV
from .config import (
    WHAT,
    ConfigError,
    ScorerConfig,
    ServeConfig,
    ServerConfig,
    load_config,
    server_config,
)

log = logging.getLogger("tokenweight.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    groups: dict = {}
    add_flags(parser, ScorerConfig, unset_is_none=True, groups=groups)
    groups[WHAT].add_argument(
        "--config", help="TOML file with several [[scorers]] (see service/config.py)"
    )
    add_flags(parser, ServerConfig, unset_is_none=True, groups=groups)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


def build_config(args: argparse.Namespace):
    """The ServeConfig the flags (and --config file) describe; ConfigError if inconsistent."""
    from tokenweight.bundled import model_or_default

    overrides = values_of(args, ServerConfig)
    overrides["auth_token"] = args.auth_token or os.environ.get(TOKEN_ENV) or None
    if args.config:
        # Each [[scorers]] entry carries its own settings, allow_pickle included: a scorer flag
        # beside --config would be silently dropped, so it is refused.
        scorer_flags = values_of(args, ScorerConfig)
        given = [n for n, v in scorer_flags.items() if v is not None]
        clashing = [f"--{name.replace('_', '-')}" for name in given]
        if clashing:
            raise ConfigError(f"{', '.join(clashing)} cannot be combined with --config; set them in the file")
        return load_config(args.config, overrides)
    if args.short_model and not args.model:
        raise ConfigError("--short-model needs --model (the long model it pairs with)")
    try:
        model, window, stride = model_or_default(args.model, args.window, args.stride)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    scorer = ScorerConfig(
        name=args.name or "default",
        model=str(model),
        short_model=args.short_model,
        window=window or ScorerConfig.window,
        stride=stride,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        allow_pickle=bool(args.allow_pickle),
        batch_invariant=bool(args.batch_invariant),
        compile_blocks=bool(args.compile_blocks),
    )
    return ServeConfig([scorer], scorer.name, server_config({}, overrides))


def run(args: argparse.Namespace) -> int:
    from .loading import ModelLoadError

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"tokenweight serve: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(config))
    except (ConfigError, ModelLoadError, OSError) as exc:
        log.error("%s", exc)
        return 1


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


async def _serve(config) -> int:
    from .runner import ScorerServer

    if not config.server.auth_token and not is_loopback(config.server.host):
        log.warning(
            "binding %s without authentication: anyone who can reach this host can score and "
            "read /metrics; set --auth-token or $%s, or bind 127.0.0.1",
            config.server.host,
            TOKEN_ENV,
        )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    server = ScorerServer(config)
    await server.start()
    log.info("listening (health NOT_SERVING while models load): %s", server.addresses())
    loading = asyncio.create_task(server.load())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
    try:
        if not loading.done():  # signalled while the models were still loading
            loading.cancel()
        else:
            loading.result()  # a load failure propagates, after the shutdown below
            names = [n + (" (default)" if n == config.default_scorer else "") for n in server.service.scorers]
            log.info("ready: %s scorers=[%s]", server.addresses(), ", ".join(names))
            await stopping
            log.info("draining: up to %.1fs for in-flight requests", config.server.grace_s)
    finally:
        drained = await server.shutdown()
    log.info("stopped%s", "" if drained else " (some requests did not finish within the grace)")
    return 0
