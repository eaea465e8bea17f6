"""The derivation alone, in process: microseconds per fact of `apply_batch`, no Kafka, no I/O.

The worker bench (process.py) measures the whole worker, whose figures move with whatever else
the two cores do; this isolates what a change to the derivation (case state, pairing, authority
rules) costs. Run it on two commits and compare:

    python -m benchmarks.derive_micro --cases 5000
"""

from __future__ import annotations

import argparse
import time

from services.agency.generator import GeneratorOptions, generate
from services.contracts.events import parse_event
from services.processor.batch import apply_batch
from services.processor.facts import Fact


def microseconds_per_fact(cases: int, seed: int = 7, batch: int = 500, repeat: int = 3) -> float:
    """Best of `repeat` runs of the derivation over a generated history."""
    facts = [
        Fact.from_event(parse_event(e)) for e in generate(GeneratorOptions(seed=seed, cases=cases))
    ]
    best = float("inf")
    for _ in range(repeat):
        state: dict = {}
        started = time.perf_counter()
        for i in range(0, len(facts), batch):
            result = apply_batch(facts[i : i + batch], state.get)
            state.update(result.changed)
        best = min(best, time.perf_counter() - started)
    return best / len(facts) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(f"{microseconds_per_fact(args.cases, args.seed):.1f} µs/fact")


if __name__ == "__main__":
    main()
