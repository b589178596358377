"""Where a scorer process's Python time goes, per request, from py-spy's collapsed stacks.

    python -m bench.stack_profile PROFILE.txt --rate 200 --requests 1600

`bench/service_overhead.py --profile DIR` records PROFILE.txt with `py-spy --gil`: only the
thread holding the GIL is sampled, so the samples are the process's Python time, which
every thread shares (torch releases the GIL inside its kernels). Each sample goes to the
stage of its deepest frame that names one; samples / rate / requests = ms per request.
"""

import argparse
from collections import Counter

# (stage, frame substrings), the path of a request in order; a sample's deepest frame that
# matches decides its stage.
STAGES = [
    ("gRPC decode", ("decode_request", "request_sequences", "unpack_tokens")),
    (
        "request checks",
        ("ScoringEngine.check", "ScoringEngine.resolve", "fingerprint", "_check_limits"),
    ),
    ("job building", ("Batcher._score",)),
    ("batcher queueing", ("Batcher.",)),
    ("chunk planning", ("plan_sequence", "batches_by_budget")),
    ("collation", ("collate (",)),
    ("model forward (Python, launches)", ("base_hidden_states",)),
    ("LM head, log-softmax", ("target_logprobs",)),
    (
        "engine bookkeeping, result slicing",
        (
            "compute_logprobs",
            "run_segments",
            "_launch",
            "_to_scores",
            "share_whole_prefix",
            "ScoringEngine.run",
        ),
    ),
    ("response encoding", ("build_response",)),
    (
        "servicer, interceptors, metrics",
        ("ScorerServicer", "grpc_interceptors", "prometheus_client", "ScoringService."),
    ),
]
OTHER = "event loop, gRPC runtime, other"


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, needles in STAGES:
            if any(needle in frame for needle in needles):
                return stage
    return OTHER


def summarize(path: str) -> Counter:
    counts: Counter = Counter()
    with open(path) as lines:
        for line in lines:
            stack, _, samples = line.rstrip().rpartition(" ")
            counts[stage_of(stack.split(";"))] += int(samples)
    return counts


def table(path: str, rate: float, requests: int) -> str:
    counts = summarize(path)
    total = sum(counts.values())
    lines = ["| stage | share of Python time | ms per request |", "|---|---:|---:|"]
    for stage in [s for s, _ in STAGES] + [OTHER]:
        ms = 1000 * counts[stage] / rate / requests
        lines.append(f"| {stage} | {100 * counts[stage] / total:.1f}% | {ms:.3f} |")
    lines.append(f"| **all** | 100% | {1000 * total / rate / requests:.3f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("profile")
    parser.add_argument("--rate", type=float, required=True, help="py-spy's samples per second")
    parser.add_argument("--requests", type=int, required=True, help="requests served meanwhile")
    args = parser.parse_args()
    print(table(args.profile, args.rate, args.requests))


if __name__ == "__main__":
    main()
