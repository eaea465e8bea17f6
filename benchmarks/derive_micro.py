"""The derivation alone, in process: microseconds per fact of `apply_batch`, no Kafka, no I/O.

The worker bench (process.py) measures the whole worker, whose figures move with whatever else
the two cores do; this isolates what a change to the derivation (case state, pairing, authority
rules, the stored-state codec) costs. Run it on two commits and compare:

    python -m benchmarks.derive_micro --events 100000 --batch 5000
    python -m benchmarks.derive_micro --events 100000 --batch 5000 --out-of-order 0.1 \\
        --duplicates 0.05 --violations 0.05

`apply_batch` is timed with the decoding of every touched case's stored state and the encoding
of its new state included (the worker pays both per batch); the envelope figure is the decode of
envelopes of `--batch` facts (what derive unpacks per message). Only public interfaces are used
(`apply_batch`, `envelope.encode` / `envelope.decode`), so the same file measures an older
commit: `PYTHONPATH=<checkout> python <this file> ...`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from services.agency.generator import GeneratorOptions, generate
from services.contracts.events import parse_event
from services.processor import batch as batch_module
from services.processor import envelope
from services.processor.batch import apply_batch
from services.processor.facts import Fact


def generated_facts(
    *,
    events: int | None = None,
    cases: int | None = None,
    seed: int = 7,
    out_of_order: float = 0.0,
    duplicates: float = 0.0,
    violations: float = 0.0,
) -> list[Fact]:
    """A generated history as the derive step receives it (in the generator's output order)."""
    options = GeneratorOptions(
        seed=seed,
        events=events,
        cases=cases,
        out_of_order=out_of_order,
        duplicates=duplicates,
        violations=violations,
    )
    return [Fact.from_event(parse_event(e)) for e in generate(options)]


#: The clock of the figures: "cpu" (this process's CPU time, what the derivation costs; steady
#: when other processes share the cores) or "wall" (elapsed time).
CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCK["cpu"]


def _best_of(repeat: int, run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = clock()
        run()
        best = min(best, clock() - started)
    return best


def apply_batch_us(facts: list[Fact], batch: int = 5000, repeat: int = 3) -> float:
    """Best of `repeat` runs of `apply_batch` over the facts in batches, µs per fact."""

    def run() -> None:
        state: dict[str, bytes] = {}
        for i in range(0, len(facts), batch):
            result = apply_batch(facts[i : i + batch], state.get)
            state.update(result.changed)

    return _best_of(repeat, run) / len(facts) * 1e6


def envelope_decode_us(facts: list[Fact], batch: int = 5000, repeat: int = 3) -> float:
    """Best of `repeat` decodes of the facts packed in envelopes of `batch`, µs per fact."""
    packed = [envelope.encode(facts[i : i + batch]) for i in range(0, len(facts), batch)]

    def run() -> None:
        for raw in packed:
            envelope.decode(raw)

    return _best_of(repeat, run) / len(facts) * 1e6


def envelope_encode_us(facts: list[Fact], batch: int = 5000, repeat: int = 3) -> float:
    """Best of `repeat` encodes of the facts in envelopes of `batch`, µs per fact."""
    chunks = [facts[i : i + batch] for i in range(0, len(facts), batch)]

    def run() -> None:
        for chunk in chunks:
            envelope.encode(chunk)

    return _best_of(repeat, run) / len(facts) * 1e6


def microseconds_per_fact(cases: int, seed: int = 7, batch: int = 500, repeat: int = 3) -> float:
    """`apply_batch` µs per fact over a generated history of `cases` cases."""
    return apply_batch_us(generated_facts(cases=cases, seed=seed), batch, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--events", type=int, help="approximate number of generated events")
    size.add_argument("--cases", type=int, help="exact number of generated cases")
    parser.add_argument("--batch", type=int, default=5000, help="facts per apply_batch call")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best one counts")
    parser.add_argument("--out-of-order", type=float, default=0.0)
    parser.add_argument("--duplicates", type=float, default=0.0)
    parser.add_argument("--violations", type=float, default=0.0)
    parser.add_argument("--clock", choices=sorted(CLOCK), default="cpu")
    parser.add_argument(
        "--kept",
        type=int,
        help="cases whose derivation apply_batch keeps between batches (0: none; default: its own)",
    )
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    cache = getattr(batch_module, "derivations", None)  # absent before the kept derivations
    if cache is not None and args.kept is not None:
        cache.capacity = args.kept
    if args.events is None and args.cases is None:
        args.cases = 5000
    facts = generated_facts(
        events=args.events,
        cases=args.cases,
        seed=args.seed,
        out_of_order=args.out_of_order,
        duplicates=args.duplicates,
        violations=args.violations,
    )
    cases = len({f.case_id for f in facts})
    print(
        f"{len(facts)} facts, {cases} cases, batch {args.batch}, best of {args.repeat} ({args.clock})"
    )
    if cache is not None:
        cache.clear()
    print(f"apply_batch:     {apply_batch_us(facts, args.batch, args.repeat):8.2f} µs/fact")
    if cache is not None:
        runs = cache.hits + cache.misses
        print(
            f"  kept derivations: {cache.capacity}, went on with {cache.hits / runs:.0%} of cases"
        )
    print(f"envelope decode: {envelope_decode_us(facts, args.batch, args.repeat):8.2f} µs/fact")
    print(f"envelope encode: {envelope_encode_us(facts, args.batch, args.repeat):8.2f} µs/fact")


if __name__ == "__main__":
    main()
