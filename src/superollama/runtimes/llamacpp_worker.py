"""Child process of one llama.cpp instance: runs llama.cpp's own HTTP server (xllamacpp) until SIGTERM.

    python -m superollama.runtimes.llamacpp_worker --instance-id ID --model PATH --alias NAME \
        [--ctx N] [--parallel N] [--threads N] [--embedding | --no-embedding] [--reranking] \
        [--mmproj PATH] [--parent-pid PID] [--guardian-pid PID]

``--mmproj``: a vision model's projector GGUF; llama.cpp's server then reads ``image_url`` parts.

Only this module imports ``xllamacpp``; the agent never does. The original stdout is kept as the control
pipe for the one handshake line (``_ready``) and then closed; everything else written to stdout or stderr
(llama.cpp logs a lot) goes to stderr, which the parent points at the instance's log file.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

from superollama.runtimes._child import settle_lifetime
from superollama.runtimes._ready import format_failed, format_ready

__all__ = ["main"]

_GGUF_MAGIC = b"GGUF"
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m superollama.runtimes.llamacpp_worker")
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--model", required=True, type=Path, help="GGUF file")
    parser.add_argument("--alias", required=True, help="model name the server answers to")
    parser.add_argument("--lora", action="append", type=Path, default=[], help="GGUF LoRA adapter to apply")
    parser.add_argument("--ctx", type=int, default=0, help="context size (0: the model's own)")
    parser.add_argument("--parallel", type=int, default=1, help="concurrent sequences (slots)")
    parser.add_argument("--threads", type=int, default=-1, help="CPU threads (-1: llama.cpp decides)")
    parser.add_argument("--embedding", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--reranking", action="store_true", help="a cross-encoder: serve /v1/rerank (rank pooling)"
    )
    parser.add_argument("--mmproj", type=Path, default=None, help="projector GGUF (vision models)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit at once if not our parent")
    parser.add_argument("--guardian-pid", type=int, default=None, help="outlive the parent, die with it")
    return parser.parse_args(argv)


def _take_control_pipe() -> IO[str]:
    """Keep the original stdout for the handshake; route fd 1 (Python and C alike) to stderr."""
    control = os.fdopen(os.dup(1), "w", encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    return control


def _precheck(model: Path) -> str | None:
    """A clear reason for the common failures; llama.cpp itself only says 'Failed to init server'."""
    if not model.exists():
        return f"model file not found: {model}"
    if not model.is_file():
        return f"model path is not a file: {model}"
    try:
        with model.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        return f"cannot read model file {model}: {exc}"
    if magic != _GGUF_MAGIC:
        return f"not a GGUF file (magic {magic!r}): {model}"
    return None


def _start_server(args: argparse.Namespace) -> Any:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(args.model)
    params.model_alias = {args.alias}
    adapters = []
    for path in args.lora:
        adapter = xllamacpp.CommonAdapterLoraInfo()
        adapter.path = str(path)
        adapter.scale = 1.0
        adapters.append(adapter)
    params.lora_adapters = adapters
    params.port = 0
    params.hostnames = [args.host]
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    if args.mmproj is not None:
        params.mmproj.path = str(args.mmproj)
    if args.threads > 0:
        params.cpuparams.n_threads = args.threads
    if args.reranking:  # what llama-server's --reranking sets: its /v1/rerank answers only then
        params.embedding = True
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_RANK
    elif args.embedding:
        params.embedding = True
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    return xllamacpp.Server(params)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Block SIGTERM/SIGINT before any other thread starts (the guardian's watcher, llama.cpp's: they
    # inherit the mask), then take them with sigwait: no handler runs at an arbitrary point (a handler
    # that sets a threading.Event can deadlock against the Event's own lock), and a handler llama.cpp
    # might install never fires.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    if not settle_lifetime(args.parent_pid, args.guardian_pid):
        print("parent is gone before start: exiting", file=sys.stderr)
        return 3
    control = _take_control_pipe()

    reason = _precheck(args.model)
    server: Any = None
    if reason is None:
        try:
            server = _start_server(args)
        except Exception as exc:
            reason = f"llama.cpp could not load {args.model}: {exc}"
    if server is None:
        control.write(format_failed(reason or "unknown error"))
        control.close()
        return 1
    address = str(server.listening_address)
    print(f"instance {args.instance_id}: serving {args.alias} at {address}", file=sys.stderr, flush=True)
    control.write(format_ready(address, os.getpid()))
    control.close()

    signum = signal.sigwait(_STOP_SIGNALS)
    print(
        f"instance {args.instance_id}: {signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True
    )
    del server  # stops llama.cpp's HTTP server and frees the model
    return 0


if __name__ == "__main__":
    sys.exit(main())
