"""`shusheng-deploy`: generate, serve, chat, and benchmark (offline and online).

    shusheng-deploy generate PATH --prompt "Hello" [--chat] [--max-tokens 64] [--temperature 0.7] [--stream]
    shusheng-deploy bench PATH [--num-requests 256] [--input-len 100:1024] [--output-len 100:1024]
    shusheng-deploy serve PATH [--port 8000] [--api-keys K1,K2] [--served-model-name NAME] [--tp 2]
    shusheng-deploy chat URL_OR_PATH
    shusheng-deploy bench-serve URL [--request-rate 4 | --max-concurrency 16] [--dataset sharegpt.json]

Bad input (a missing checkpoint, an impossible request) prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import EngineConfig


def _engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--max-num-seqs", type=int, default=256)
    g.add_argument("--max-num-batched-tokens", type=int, default=8192)
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    g.add_argument("--max-prefill-graph-tokens", type=int, default=2048, metavar="N",
                   help="prefill and mixed steps of up to N tokens replay CUDA graphs cut at the attention calls "
                        "(0: eager)")
    g.add_argument("--no-prefix-caching", action="store_true")
    g.add_argument("--tp", type=int, default=1, metavar="N",
                   help="tensor parallelism: shard the model over N local GPUs (cuda:0 .. cuda:N-1), one process each")


def _engine_config(a: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=a.path, device=a.device, dtype=a.dtype, max_model_len=a.max_model_len, max_num_seqs=a.max_num_seqs,
        max_num_batched_tokens=a.max_num_batched_tokens, gpu_memory_utilization=a.gpu_memory_utilization,
        block_size=a.block_size, enforce_eager=a.enforce_eager, enable_prefix_caching=not a.no_prefix_caching,
        tensor_parallel_size=a.tp, max_prefill_graph_tokens=a.max_prefill_graph_tokens,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shusheng-deploy", description="Shusheng inference engine")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text for one or more prompts")
    g.add_argument("path", help="checkpoint folder")
    g.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    g.add_argument("--chat", action="store_true", help="render each prompt as a user turn of the chat template")
    g.add_argument("--system", default=None, help="system prompt for --chat")
    g.add_argument("--max-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    g.add_argument("--stream", action="store_true", help="print text as it is generated (one prompt)")
    _engine_args(g)
    s = sub.add_parser("serve", help="the OpenAI-compatible HTTP server")
    s.add_argument("path", help="checkpoint folder")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-keys", default=None, help="comma-separated keys clients must send as Bearer tokens")
    s.add_argument("--served-model-name", default=None, help="the model id clients use (default: the folder name)")
    s.add_argument("--chat-template", default=None, help="internlm2, llama3 or chatml (default: the tokenizer's)")
    s.add_argument("--max-queue", type=int, default=1024, help="requests in flight before 503")
    s.add_argument("--log-level", default="info")
    s.add_argument("--engine-in-thread", action="store_true",
                   help="run the engine in a thread of the server process instead of its own process "
                        "(less start-up time, more contention under load)")
    s.add_argument("--engine-cpus", default=None, metavar="LIST",
                   help="CPUs for the engine's step loop alone, e.g. 15 or 12-15 (the server keeps the others): a "
                        "step loop that stays on warm cores starts requests sooner")
    s.add_argument("--api-servers", type=int, default=1, metavar="N",
                   help="HTTP work split over N processes in front of the one engine process (for many requests "
                        "at once; --max-queue is shared among them)")
    _engine_args(s)
    from . import bench_serve, chat_client

    chat_client.add_arguments(sub.add_parser("chat", help="terminal chat with a server URL or a checkpoint folder"))
    bench_serve.add_arguments(sub.add_parser("bench-serve", help="online benchmark of an OpenAI-compatible server"))
    b = sub.add_parser("bench", help="offline throughput on a synthetic workload")
    b.add_argument("path", help="checkpoint folder")
    b.add_argument("--num-requests", type=int, default=256)
    b.add_argument("--input-len", default="100:1024", help="LO:HI, uniform")
    b.add_argument("--output-len", default="100:1024", help="LO:HI, uniform (ignore_eos)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", default=None, help="also write the results here")
    _engine_args(b)
    return p


def cmd_generate(a: argparse.Namespace) -> int:
    from .pipeline import Pipeline
    from .sampling_params import SamplingParams
    from .tensor_parallel import build_engine

    params = SamplingParams(max_tokens=a.max_tokens, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k,
                            seed=a.seed, stop=a.stop)
    if a.stream and len(a.prompt) != 1:
        raise ValueError("--stream takes one --prompt")
    pipe = Pipeline(build_engine(_engine_config(a)))
    try:
        return _generate(pipe, params, a)
    finally:
        pipe.shutdown()


def _generate(pipe, params, a: argparse.Namespace) -> int:
    inputs = [
        ([{"role": "system", "content": a.system}] if a.system else []) + [{"role": "user", "content": t}]
        if a.chat else t
        for t in a.prompt
    ]
    if a.stream:
        prompt = pipe.render(inputs[0]) if a.chat else inputs[0]
        engine = pipe.engine
        engine.add_request(prompt, params)
        while engine.has_unfinished():
            for out in engine.step():
                print(out.outputs[0].delta_text, end="", flush=True)
        print()
        return 0
    for out in pipe(inputs, params):
        for choice in out.outputs:
            print(choice.text)
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from .bench import Workload, measure_ceilings, parse_range, roofline, run_offline
    from .tensor_parallel import build_engine

    engine = build_engine(_engine_config(a))
    work = Workload(a.num_requests, parse_range(a.input_len), parse_range(a.output_len), a.seed)
    requests = work.sample(engine.model_config.vocab_size)
    result = run_offline(engine, requests)
    print(f"requests/s {result['requests_per_s']:.2f}   output tokens/s {result['output_tokens_per_s']:.0f}   "
          f"({result['requests']} requests, {result['output_tokens']} output tokens, {result['seconds']:.1f} s)")
    if engine.runner.device.type == "cuda":
        ceilings = measure_ceilings(engine.runner.device)
        roof = roofline(engine.model_config, requests, ceilings, a.max_num_seqs, num_devices=a.tp)
        result.update(ceilings=ceilings, roofline=roof)
        print(f"roofline: {roof['output_tokens_per_s_roofline']:.0f} output tokens/s (floor {roof['floor_s']:.2f} s: "
              f"prefill {roof['prefill_floor_s']:.2f} + decode {roof['decode_floor_s']:.2f}); engine reaches "
              f"{result['output_tokens_per_s'] / roof['output_tokens_per_s_roofline']:.0%}; measured copy "
              f"{ceilings['bandwidth'] / 1e12:.2f} TB/s, bf16 GEMM {ceilings['gemm_flops'] / 1e12:.0f} TFLOP/s"
              f"{f' per card, x{a.tp} cards' if a.tp > 1 else ''}; "
              f"batch-1 decode floor {roof['batch1_decode_floor_ms']:.2f} ms/token")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from pathlib import Path

    import uvicorn

    from shusheng.model.chat import list_templates

    from .async_engine import AsyncEngine
    from .engine_process import ProcessAsyncEngine, freeze_heap, parse_cpu_list
    from .server import build_app
    from .tensor_parallel import build_engine, check_config

    if a.chat_template is not None and a.chat_template not in list_templates():
        raise ValueError(f"unknown --chat-template {a.chat_template!r}; choose from {list_templates()}")
    config = _engine_config(a)
    if config.tensor_parallel_size > 1:
        check_config(config)  # here, before any process starts: a bad degree gets its one-line error
    engine_cpus = parse_cpu_list(a.engine_cpus) if a.engine_cpus else None
    if engine_cpus and a.engine_in_thread:
        raise ValueError("--engine-cpus pins the engine process: it cannot be used with --engine-in-thread")
    if a.api_servers < 1:
        raise ValueError(f"--api-servers must be >= 1, got {a.api_servers}")
    if a.api_servers > 1 and a.engine_in_thread:
        raise ValueError("--api-servers N > 1 puts the engine in a process of its own: drop --engine-in-thread")
    name = a.served_model_name or Path(a.path).resolve().name
    keys = [k.strip() for k in a.api_keys.split(",")] if a.api_keys else None
    if a.api_servers > 1:
        from .server.workers import serve_workers

        app_kwargs = dict(model_name=name, api_keys=keys, chat_template=a.chat_template,
                          max_queue=-(-a.max_queue // a.api_servers))
        return serve_workers(config, a.api_servers, a.host, a.port, app_kwargs, a.log_level, engine_cpus)
    # A thread beside the event loop hands the engine's outputs over: the engine thread (which gives up the GIL at
    # every CUDA sync) or the engine process's pipe reader. With the default 5 ms switch interval a busy event loop
    # can keep it waiting that long for the GIL, once or more per decode step: every stream's next chunk waits too.
    sys.setswitchinterval(0.001)
    if a.engine_in_thread:
        engine = AsyncEngine(build_engine(config))
    else:
        try:
            engine = ProcessAsyncEngine(config, engine_cpus=engine_cpus)
        except RuntimeError as e:  # the engine's own start-up error (bad checkpoint, no memory): one line, exit 2
            raise ValueError(str(e).removeprefix("the engine failed to start: ")) from None
    app = build_app(engine, name, keys, a.chat_template, a.max_queue)
    freeze_heap()
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        from . import bench_serve, chat_client

        commands = {"generate": cmd_generate, "bench": cmd_bench, "serve": cmd_serve,
                    "chat": chat_client.main_from_args, "bench-serve": bench_serve.main_from_args}
        return commands[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"shusheng-deploy: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
