"""``pregate recommend``: what to run for a model on a GPU, and how close it is to the best possible."""

HELP = "recommend a GPU expert cache, a static CPU placement or a hybrid, with its settings, for a model on a GPU and host"
DESCRIPTION = """Answer "what should I run on my GPU, and why?": the best speculation, caching
policy, cache size and compression that fit the GPU's memory, the expected
tokens/s, and the gap to two references (all experts resident; perfect
prediction: oracle prefetch with Belady eviction) and to the proven lower
bound on step time. It says whether a GPU expert cache with prefetch, a static
CPU placement (experts pinned on the GPU, the rest computed on the CPU) or a
hybrid (a cache whose misses may run on the CPU) is best for the model, GPU,
memory and host (--host), by how much, and with --uncertainty how sure; it
prints the 'pregate execute' line of the winner and, for the best static
layer placement, the llama.cpp flags that place the same experts on the CPU
(an equivalence of placement, not a prediction of llama.cpp's speed).

The expert cache gets the GPU memory (the profile's, or --vram) minus the
dense weights minus a working margin (default 0.5 GB + 8% of the memory).
MODEL is a trace folder (its recorded routing is used; --price-as MODEL or
--model-config FILE prices that routing at another model's size) or a known
model shape (see 'pregate models': switch-base-8..256, switch-large-128,
mixtral-8x7b, olmoe-1b-7b, qwen1.5-moe-a2.7b, qwen3-30b-a3b, ...; a tiny
test variant is traced first with 'pregate trace --random-init'). For a known shape, a shipped sample trace of the same routing
topology is priced as that model (mixtral-8x7b: the Mixtral-topology sample);
without one, a synthetic trace of that shape is generated and the answer says
the routing is synthetic. Without --model, the shipped sample trace is used.

examples:
  pregate recommend --model mixtral-8x7b --profile rtx3090
  pregate recommend --model mixtral-8x7b --profile rtx3090 --host ddr4-3200-2ch   # cache, CPU placement or hybrid?
  pregate recommend --model mixtral-8x7b --profile rtx3090 --runtime gpu-bound
  pregate recommend --model mixtral-8x7b --profile rtx3090 --uncertainty corners
  pregate recommend --model runs/sb8 --profile t4 --batch-size 8
  pregate recommend --model switch-base-128 --profile rtx3060-12gb --vram 10 --json
  pregate recommend --model olmoe-1b-7b --profile h100-pcie --json answer.json --quiet
  pregate recommend --model runs/mx --price-as mixtral-8x7b          # your routing, Mixtral's sizes
  pregate recommend --model runs/mx --policy-arg multi_layer.decay=0.3  # a policy parameter for its candidates"""


import argparse


def add_arguments(parser) -> None:
    parser.add_argument("--model", metavar="M", help="trace folder or known model shape (default: the shipped sample trace)")
    parser.add_argument("--profile", "--gpu", dest="profile", default="rtx3090",
                        help="hardware profile: built-in name, TOML file or auto (default: rtx3090; --gpu is an alias)")
    from dataclasses import fields

    from pregate.simulator.settings import Settings as _Settings

    host_help = next(f.metadata["help"] for f in fields(_Settings) if f.name == "host")
    parser.add_argument("--host", default="", help=host_help.replace("%", "%%"))
    parser.add_argument("--runtime", default="", help="runtime profile: pregate-eager (default), gpu-bound or a TOML file")
    parser.add_argument("--uncertainty", default="", help="price every point across its profiles' ranges: corners or "
                        "a number of seeded samples; says whether the winner stays the winner, and which value "
                        "decides it if not")
    parser.add_argument("--vram", type=float, metavar="GB", help="GPU memory to plan for, in GB (default: the profile's)")
    parser.add_argument("--margin", type=float, metavar="GB", help="memory kept free besides dense weights and cache "
                        "(default: 0.5 GB + 8%% of the GPU memory)")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences decoded together (default: 1)")
    from pregate.simulator.pricing import MODEL_CONFIG_HELP
    from pregate.simulator.settings import Settings

    parser.add_argument("--price-as", metavar="MODEL", default="", help=Settings.help_texts()["price_as"])
    parser.add_argument("--model-config", metavar="FILE", help=MODEL_CONFIG_HELP)
    from pregate.traces.cliargs import add_policy_args

    add_policy_args(parser, "a policy parameter, NAME=VALUE (repeatable), for every candidate whose policy has it: "
                            "POLICY.PARAM or a PARAM only one candidate has ('pregate simulate --help' lists them)")
    parser.add_argument("--workers", type=int, help="local worker processes (default: all cores)")
    parser.add_argument("--results", metavar="DIR", help="keep the simulated points in this sweep results folder")
    from pregate.traces.cliargs import add_json, add_quiet

    add_json(parser, "the recommendation")
    add_quiet(parser)
    parser.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for scripts


def run(args) -> int:
    import json
    import sys

    from pregate.traces.cliargs import emit_json, json_to_stdout
    from pregate.simulator.pricing import spec_from_flags
    from pregate.simulator.recommend import format_recommendation, recommend
    from pregate.simulator.sweep import sample_trace, sample_trace_path

    model = args.model
    if model is None:
        try:
            model = str(sample_trace())
        except Exception:
            from pregate.simulator.sweep import SweepError

            raise SweepError(f"no --model given and the shipped sample trace is missing ({sample_trace_path()})") from None
        if not args.quiet:
            print(f"no --model given: using the shipped sample trace {model}", file=sys.stderr)
    rec = recommend(model, args.profile, vram_gb=args.vram, batch_size=args.batch_size, margin_gb=args.margin,
                    workers=args.workers, results=args.results, progress=not args.quiet,
                    runtime=args.runtime, uncertainty=args.uncertainty,
                    price_as=spec_from_flags(args.price_as, args.model_config), policy_args=args.policy_args or (),
                    host=args.host)
    if not json_to_stdout(args):
        print(format_recommendation(rec))
    emit_json(args, json.dumps(rec.to_dict(), indent=2, sort_keys=True))
    return 0
