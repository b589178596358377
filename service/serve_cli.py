"""`tokenweight serve`: host one scorer (--model) or several (--config) over gRPC and HTTP."""

import argparse
import asyncio
import logging
import os
import signal
import sys

from .auth import TOKEN_ENV

log = logging.getLogger("tokenweight.serve")

# Flags that describe the single --model scorer; with --config the file says these.
_SCORER_FLAGS = (
    "model", "short_model", "name", "window", "stride", "device", "dtype", "max_length", "batch_invariant",
    "compile_blocks",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to serve")
    what.add_argument(
        "--model",
        help="local Hugging Face checkpoint directory (the long model; default: the bundled code "
        "model, with its window)",
    )
    what.add_argument("--short-model", help="separate short-context model (same tokenizer)")
    what.add_argument("--config", help="TOML file with several [[scorers]] (see service/config.py)")
    what.add_argument("--name", help="scorer name for --model (default: 'default')")
    what.add_argument("--window", type=int, help="short-context window k (default 1024)")
    what.add_argument("--stride", type=int, help="stride s (default 3k/4)")
    what.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    what.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: bf16 on CUDA, fp32 on CPU")
    what.add_argument(
        "--max-length", type=int,
        help="longest sequence accepted, at most the model's positions (default: those); "
        "65536 or 131072 for 64k/128k contexts, with --window 8192 or 32768",
    )
    what.add_argument(
        "--batch-invariant", action="store_true", default=None,
        help="run each pass in its own forward so scores never depend on what a request is "
        "batched with (bit-identical; slower for short sequences)",
    )
    what.add_argument(
        "--compile-blocks", action="store_true", default=None,
        help="compile the decoder layers (norms, RoPE, MLP fused; attention stays cuDNN/SDPA): "
        "faster on GPUs, same scores to bf16 rounding; compiles once at start-up",
    )
    what.add_argument("--allow-pickle", action="store_true", default=None, help="allow pytorch_model.bin checkpoints (runs code from the file)")

    net = parser.add_argument_group("network")
    net.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    net.add_argument("--grpc-port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    net.add_argument("--http-port", type=int, help="HTTP port (default 8000; 0 = any free port)")
    net.add_argument("--no-http", dest="http", action="store_false", default=None, help="serve gRPC only")
    net.add_argument("--tls-cert", help="PEM certificate: serve gRPC and HTTP over TLS")
    net.add_argument("--tls-key", help="PEM private key for --tls-cert")
    net.add_argument("--auth-token", help=f"shared bearer token required on every request (default ${TOKEN_ENV})")

    tune = parser.add_argument_group("batching and limits")
    tune.add_argument("--batch-tokens", type=int, help="tokens coalesced per engine call (default: the engine's token budget)")
    tune.add_argument("--max-wait-ms", type=float, help="longest a request waits for others to batch with (default 5)")
    tune.add_argument("--queue-size", type=int, help="requests waiting per scorer before RESOURCE_EXHAUSTED (default 256)")
    tune.add_argument(
        "--max-request-tokens", type=int,
        help="tokens per request (default 1048576: eight 128k sequences); gRPC and HTTP message "
        "limits are sized from it",
    )
    tune.add_argument("--max-sequences", type=int, help="sequences per request (default 4096)")
    tune.add_argument("--cache-mb", type=float, help="in-memory score cache size (default 0 = off)")
    tune.add_argument("--grace", dest="grace_s", type=float, help="seconds to drain on SIGTERM (default 30)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


def build_config(args: argparse.Namespace):
    """The ServeConfig the flags (and --config file) describe; ConfigError if inconsistent."""
    from tokenweight.bundled import model_or_default

    from .config import ConfigError, ScorerConfig, ServeConfig, load_config, server_config

    overrides = {
        key: getattr(args, key)
        for key in (
            "host", "grpc_port", "http_port", "http", "tls_cert", "tls_key", "batch_tokens",
            "max_wait_ms", "queue_size", "max_request_tokens", "max_sequences", "cache_mb", "grace_s",
        )
    }
    overrides["auth_token"] = args.auth_token or os.environ.get(TOKEN_ENV) or None
    if args.config:
        clashing = [f"--{f.replace('_', '-')}" for f in _SCORER_FLAGS if getattr(args, f) is not None]
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
    from .config import ConfigError
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


async def _serve(config) -> int:
    from .runner import ScorerServer

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
