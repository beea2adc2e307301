"""The built-in benchmark: a seeded generator of short program-synthesis problems (DESIGN §1).

Every problem is a pipeline over an input value (see ``primitives.py``): one to three transform
steps, then a terminal step. The number of transform steps is the difficulty (1 introductory,
2 interview, 3 competition). Problems come in the two APPS formats: stdin (a script that reads the
input and prints the answer) and call-based (``def solve(...)`` returning the answer).

The split rule. A problem's *combination* is the sequence of its primitive names (transforms then
terminal, parameters left out); its *pairs* are the adjacent pairs of that sequence. A seeded
fraction of all possible pairs of each family is held out. Training problems contain no held-out
pair; every test problem contains at least one held-out pair and uses only primitives that occur
in the generated training problems. So no test combination occurs in training, while every
primitive a test problem needs was seen there, in other company.

Hidden tests are computed by running the canonical implementations of the primitives on random
inputs; the reference solutions (one per code style, duplicates removed) are checked against
them in-process before anything is written. The same seed and sizes give byte-identical output.
"""

from __future__ import annotations

import copy
import io
import json
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bcoder_core.benchmark.primitives import (
    ALPHABET,
    FAMILIES,
    LIST_MAX_LEN,
    LIST_MAX_VALUE,
    LIST_MIN_VALUE,
    PRIMITIVES,
    STRING_MAX_LEN,
    STYLES,
    Primitive,
    terminals,
    transforms,
)
from bcoder_core.config import cli_flags
from bcoder_core.errors import BcoderError, check

BENCHMARK_NAME = "bcoder-bench"
BENCHMARK_VERSION = 1
DIFFICULTIES: dict[int, str] = {1: "introductory", 2: "interview", 3: "competition"}
# Problem i gets difficulty _STEPS_CYCLE[i % 5], format "call" for odd i, family "string" when
# i % 3 == 2: every combination of the three appears once in each run of 30 consecutive problems.
_STEPS_CYCLE = (1, 2, 3, 1, 2)
_MAX_PIPELINE_TRIES = 400
_MAX_INPUT_TRIES = 8


@dataclass(frozen=True)
class BenchmarkConfig:
    """What ``bcoder benchmark generate`` generates."""

    CLI_FLAGS: ClassVar[dict[str, str]] = cli_flags("seed n_train n_test n_val n_hidden n_examples")
    """Fields the stage command has a flag for (``--num-samples`` for num_samples ...)."""

    seed: int = 0
    """Seed of everything: held-out pairs, pipelines, parameters, phrasings, tests."""
    n_train: int = 1000
    """Number of training problems."""
    n_test: int = 200
    """Number of test problems."""
    n_val: int = 0
    """Number of validation problems: drawn by the test rule (each holds a held-out pair), disjoint
    from test, generated after it so the test split does not depend on it. Tune here, never on test."""
    n_hidden: int = 6
    """Hidden tests per problem besides the examples (the examples are hidden tests too, as in APPS)."""
    n_examples: int = 1
    """Example tests shown in each statement (1 or 2)."""
    heldout_fraction: float = 0.2
    """Fraction of each family's adjacent primitive pairs reserved for the test split."""
    name: str = BENCHMARK_NAME
    """Benchmark name recorded in ``benchmark.json`` (the loader's ``--name``)."""

    def __post_init__(self) -> None:
        check(self.n_train >= 1, "n_train", f"must be >= 1 (got {self.n_train})")
        check(self.n_test >= 0, "n_test", f"must be >= 0 (got {self.n_test})")
        check(self.n_val >= 0, "n_val", f"must be >= 0 (got {self.n_val})")
        check(self.n_hidden >= 5, "n_hidden", f"must be at least 5 (got {self.n_hidden})")
        check(self.n_examples in (1, 2), "n_examples", f"must be 1 or 2 (got {self.n_examples})")
        check(
            0.0 < self.heldout_fraction < 0.5,
            "heldout_fraction",
            f"must be in (0, 0.5) (got {self.heldout_fraction})",
        )


@dataclass(frozen=True)
class Step:
    """One step of a pipeline: a primitive, its parameter (or None) and the phrasing used."""

    name: str
    param: Any = None
    phrasing: int = 0

    @property
    def primitive(self) -> Primitive:
        return PRIMITIVES[self.name]

    def describe(self) -> str:
        """``name`` or ``name(param)``: the step as written in metadata.json."""
        if self.param is None:
            return self.name
        if isinstance(self.param, tuple):
            return f"{self.name}({','.join(map(str, self.param))})"
        return f"{self.name}({self.param})"


@dataclass
class GeneratedProblem:
    """One problem, before it is written in the APPS folder layout."""

    split: str
    index: int
    family: str
    format: str
    steps: tuple[Step, ...]  # transforms then the terminal
    question: str = ""
    starter_code: str = ""
    inputs: list[Any] = field(default_factory=list)  # examples first
    outputs: list[Any] = field(default_factory=list)
    n_examples: int = 1
    solutions: list[str] = field(default_factory=list)

    @property
    def difficulty(self) -> str:
        return DIFFICULTIES[len(self.steps) - 1]

    @property
    def combination(self) -> tuple[str, ...]:
        return combination(self.steps)

    @property
    def fn_name(self) -> str | None:
        return "solve" if self.format == "call" else None

    def input_output(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.fn_name:
            d["fn_name"] = self.fn_name
        d["inputs"] = self.inputs
        d["outputs"] = self.outputs
        return d

    def example_tests(self) -> dict[str, Any]:
        """The examples shown in the statement: the first hidden tests, in the same shape."""
        return {"inputs": self.inputs[: self.n_examples], "outputs": self.outputs[: self.n_examples]}

    def metadata(self) -> dict[str, Any]:
        return {
            "difficulty": self.difficulty,
            "source": BENCHMARK_NAME,
            "family": self.family,
            "format": self.format,
            "steps": [s.describe() for s in self.steps],
            "combination": list(self.combination),
            "num_examples": self.n_examples,
        }


# ------------------------------------------------------------------------------------ split rule


def combination(steps: Iterable[Step]) -> tuple[str, ...]:
    """Primitive names in order (transforms, then the terminal), parameters left out."""
    return tuple(s.name for s in steps)


def adjacent_pairs(combo: tuple[str, ...]) -> set[tuple[str, str]]:
    return {(combo[i], combo[i + 1]) for i in range(len(combo) - 1)}


def all_pairs(family: str) -> list[tuple[str, str]]:
    """Every adjacent pair a pipeline of ``family`` can contain, sorted."""
    ts = [p.name for p in transforms(family)]
    terms = [p.name for p in terminals(family)]
    pairs = [(a, b) for a in ts for b in ts if a != b] + [(a, b) for a in ts for b in terms]
    return sorted(pairs)


def heldout_pairs(seed: int, fraction: float) -> dict[str, frozenset[tuple[str, str]]]:
    """The pairs reserved for the test split, per family.

    Drawn again (with a new attempt number) until every primitive still has, in training, a pair
    on each side it can take: a successor for every transform, a predecessor for every
    transform and terminal.
    """
    out: dict[str, frozenset[tuple[str, str]]] = {}
    for family in FAMILIES:
        universe = all_pairs(family)
        count = max(1, round(fraction * len(universe)))
        for attempt in range(100):
            rng = random.Random(f"{seed}:heldout:{family}:{attempt}")
            held = frozenset(rng.sample(universe, count))
            allowed = [p for p in universe if p not in held]
            firsts = {a for a, _ in allowed}
            seconds = {b for _, b in allowed}
            ts = {p.name for p in transforms(family)}
            terms = {p.name for p in terminals(family)}
            if ts <= firsts and (ts | terms) <= seconds:
                out[family] = held
                break
        else:  # pragma: no cover - needs an absurd fraction
            raise BcoderError(f"benchmark: could not draw held-out pairs for {family!r}")
    return out


# ------------------------------------------------------------------------------------- sampling


def _sample_steps(rng: random.Random, family: str, n_transforms: int) -> tuple[Step, ...]:
    ts = transforms(family)
    steps: list[Step] = []
    for _ in range(n_transforms):
        prim = rng.choice([p for p in ts if not steps or p.name != steps[-1].name])
        steps.append(_step(rng, prim))
    steps.append(_step(rng, rng.choice(terminals(family))))
    return tuple(steps)


def _step(rng: random.Random, prim: Primitive) -> Step:
    param = rng.choice(prim.params) if prim.params else None
    return Step(prim.name, param, rng.randrange(len(prim.phrases)))


def _sample_value(rng: random.Random, family: str, example: bool) -> Any:
    if family == "list":
        n = rng.randint(4, 6) if example else rng.randint(1, LIST_MAX_LEN)
        return [rng.randint(LIST_MIN_VALUE, LIST_MAX_VALUE) for _ in range(n)]
    n = rng.randint(4, 8) if example else rng.randint(1, STRING_MAX_LEN)
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def run_pipeline(steps: Iterable[Step], value: Any) -> Any:
    """The canonical answer: apply each primitive's Python implementation in order."""
    for s in steps:
        value = s.primitive.apply(copy.deepcopy(value), s.param)
    return value


def _render_stdin_input(family: str, value: Any) -> str:
    if family == "list":
        return f"{len(value)}\n{' '.join(map(str, value))}\n"
    return f"{value}\n"


def _render_stdin_output(answer: Any) -> str:
    if isinstance(answer, list):
        return " ".join(map(str, answer)) + "\n"
    return f"{answer}\n"


def _answers(steps: tuple[Step, ...], values: list[Any]) -> list[Any]:
    return [run_pipeline(steps, v) for v in values]


def _acceptable(steps: tuple[Step, ...], values: list[Any], n_examples: int) -> bool:
    """Tests that tell the answer apart: varied answers, informative examples, no idle step."""
    answers = _answers(steps, values)
    if len({repr(a) for a in answers}) < 3:
        return False
    for v in values[:n_examples]:
        before_terminal = run_pipeline(steps[:-1], v)
        if not before_terminal or _render_stdin_output(run_pipeline(steps, v)).strip() == "":
            return False
    # Every transform must change some answer: dropping it is a detectably different program.
    for i in range(len(steps) - 1):
        reduced = steps[:i] + steps[i + 1 :]
        if _answers(reduced, values) == answers:
            return False
    return True


# ------------------------------------------------------------------------------------- rendering


def _indent(lines: list[str], prefix: str = "    ") -> list[str]:
    return [prefix + line for line in lines]


def render_solution(family: str, fmt: str, steps: tuple[Step, ...], style: str) -> str:
    """A complete reference program for one code style."""
    body: list[str] = []
    if family == "list":
        if fmt == "stdin":
            body += {
                "comp": ["n = int(input())", "a = list(map(int, input().split()))"],
                "loop": ["n = int(input())", "a = [int(x) for x in input().split()]"],
                "builtin": ["input()", "a = list(map(int, input().split()))"],
            }[style]
        else:
            body += {"comp": ["a = nums"], "loop": ["a = nums[:]"], "builtin": ["a = list(nums)"]}[style]
    elif fmt == "stdin":
        body += ["s = input()"] if style == "comp" else ["s = input().strip()"]
    for s in steps:
        body += s.primitive.render(style, s.param, fmt)
    if fmt == "stdin":
        return "\n".join(body) + "\n"
    arg = "nums" if family == "list" else "s"
    return "\n".join([f"def solve({arg}):", *_indent(body)]) + "\n"


def _join_steps(steps: tuple[Step, ...], fmt: str) -> str:
    phrases = [s.primitive.phrase(s.phrasing, s.param, fmt) for s in steps]
    sentences = [f"First, {phrases[0]}."]
    sentences += [f"Then, {p}." for p in phrases[1:-1]]
    sentences.append(f"Finally, {phrases[-1]}.")
    return " ".join(sentences)


def _answer_kind(answer_sample: Any) -> str:
    if isinstance(answer_sample, list):
        return "list"
    if isinstance(answer_sample, str):
        return "string"
    return "int"


def render_question(p: GeneratedProblem, values: list[Any], answers: list[Any]) -> str:
    kind = _answer_kind(answers[0])
    if p.family == "list":
        subject = "You are given a list of integers" + (" nums." if p.format == "call" else ".")
    else:
        subject = "You are given a string s of lowercase letters."
    text = f"{subject} {_join_steps(p.steps, p.format)}\n\n"
    examples = list(zip(values[: p.n_examples], answers[: p.n_examples], strict=True))
    if p.format == "stdin":
        if p.family == "list":
            inp = (
                f"The first line contains an integer n (1 <= n <= {LIST_MAX_LEN}). The second line "
                f"contains n integers, each between {LIST_MIN_VALUE} and {LIST_MAX_VALUE}."
            )
        else:
            inp = f"The only line contains the string s, of 1 to {STRING_MAX_LEN} lowercase letters."
        out = {
            "int": "Print one integer.",
            "list": "Print the numbers on one line, separated by spaces (an empty line if there are none).",
            "string": "Print the string (an empty line if it is empty).",
        }[kind]
        text += f"-----Input-----\n\n{inp}\n\n-----Output-----\n\n{out}\n\n"
        text += "-----Examples-----\n" if len(examples) > 1 else "-----Example-----\n"
        blocks = [
            f"Input\n{_render_stdin_input(p.family, v)}\nOutput\n{_render_stdin_output(a)}"
            for v, a in examples
        ]
        text += "\n".join(blocks)
    else:
        returns = {"int": "one integer", "list": "a list of integers", "string": "a string"}[kind]
        if p.family == "list":
            size = (
                f"The list nums holds 1 to {LIST_MAX_LEN} integers, each between "
                f"{LIST_MIN_VALUE} and {LIST_MAX_VALUE}."
            )
            text += f"Write a function solve(nums) that returns {returns}. {size}\n\n"
        else:
            text += (
                f"Write a function solve(s) that returns {returns}. The string s has 1 to "
                f"{STRING_MAX_LEN} lowercase letters.\n\n"
            )
        text += "-----Examples-----\n" if len(examples) > 1 else "-----Example-----\n"
        text += "".join(f"solve({v!r}) returns {a!r}\n" for v, a in examples)
    return text


# ------------------------------------------------------------------------------------ generation


def _problem_key(family: str, fmt: str, steps: tuple[Step, ...]) -> tuple:
    return (family, fmt, tuple((s.name, s.param) for s in steps))


def _generate_one(
    cfg: BenchmarkConfig,
    split: str,
    index: int,
    held: dict[str, frozenset[tuple[str, str]]],
    seen_keys: set[tuple],
    allowed_primitives: set[str] | None,
) -> GeneratedProblem:
    family = "string" if index % 3 == 2 else "list"
    fmt = "call" if index % 2 else "stdin"
    n_transforms = _STEPS_CYCLE[index % len(_STEPS_CYCLE)]
    for attempt in range(_MAX_PIPELINE_TRIES):
        rng = random.Random(f"{cfg.seed}:{split}:{index}:{attempt}")
        steps = _sample_steps(rng, family, n_transforms)
        pairs = adjacent_pairs(combination(steps))
        if split == "train" and pairs & held[family]:
            continue
        if split != "train":
            if not pairs & held[family]:
                continue
            if allowed_primitives is not None and not {s.name for s in steps} <= allowed_primitives:
                continue
        key = _problem_key(family, fmt, steps)
        if key in seen_keys:
            continue
        for _ in range(_MAX_INPUT_TRIES):
            values = [_sample_value(rng, family, example=i < cfg.n_examples) for i in range(cfg.n_examples)]
            values += [_sample_value(rng, family, example=False) for _ in range(cfg.n_hidden)]
            if _acceptable(steps, values, cfg.n_examples):
                break
        else:
            continue
        seen_keys.add(key)
        return _build(cfg, split, index, family, fmt, steps, values)
    raise BcoderError(
        f"benchmark: no acceptable problem for {split}/{index} after {_MAX_PIPELINE_TRIES} tries"
    )


def _build(
    cfg: BenchmarkConfig,
    split: str,
    index: int,
    family: str,
    fmt: str,
    steps: tuple[Step, ...],
    values: list[Any],
) -> GeneratedProblem:
    answers = _answers(steps, values)
    p = GeneratedProblem(split, index, family, fmt, steps, n_examples=cfg.n_examples)
    p.question = render_question(p, values, answers)
    if fmt == "stdin":
        p.inputs = [_render_stdin_input(family, v) for v in values]
        p.outputs = [_render_stdin_output(a) for a in answers]
    else:
        p.inputs = [[copy.deepcopy(v)] for v in values]
        p.outputs = [[a] for a in answers]  # the APPS one-element-list convention for call-based
        p.starter_code = f"def solve({'nums' if family == 'list' else 's'}):\n\t"
    solutions: list[str] = []
    for style in STYLES:
        code = render_solution(family, fmt, steps, style)
        if code not in solutions:
            solutions.append(code)
    p.solutions = solutions
    failures = verify_solutions(p)
    if failures:
        raise BcoderError(f"benchmark: reference solution fails for {split}/{index}: {failures[0]}")
    return p


def generate(cfg: BenchmarkConfig) -> dict[str, list[GeneratedProblem]]:
    """Every split, in order: ``{"train": [...], "test": [...]}`` plus ``"val"`` when ``n_val > 0``."""
    held = heldout_pairs(cfg.seed, cfg.heldout_fraction)
    seen: set[tuple] = set()
    train = [_generate_one(cfg, "train", i, held, seen, None) for i in range(cfg.n_train)]
    in_train = {name for p in train for name in p.combination}
    test = [_generate_one(cfg, "test", i, held, seen, in_train) for i in range(cfg.n_test)]
    out = {"train": train, "test": test}
    if cfg.n_val:
        out["val"] = [_generate_one(cfg, "val", i, held, seen, in_train) for i in range(cfg.n_val)]
    return out


# ---------------------------------------------------------------------------------- verification


def _run_stdin(code: Any, stdin: str) -> str:
    out = io.StringIO()
    saved = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = io.StringIO(stdin), out
    try:
        exec(code, {"__name__": "__main__"})
    finally:
        sys.stdin, sys.stdout = saved
    return out.getvalue()


def verify_solutions(p: GeneratedProblem) -> list[str]:
    """Run every reference solution on every test in-process; return what failed (empty: all pass).

    These are the generator's own programs, so ``exec`` without a sandbox is fine here; the test
    suite runs them again through the real executor.
    """
    failures: list[str] = []
    for k, src in enumerate(p.solutions):
        code = compile(src, f"<{p.split}/{p.index} solution {k}>", "exec")
        for t, (inp, expected) in enumerate(zip(p.inputs, p.outputs, strict=True)):
            try:
                if p.format == "stdin":
                    got: Any = _run_stdin(code, inp)
                    ok = got == expected
                else:
                    ns: dict[str, Any] = {"__name__": "solution"}
                    exec(code, ns)
                    got = ns["solve"](*copy.deepcopy(inp))
                    ok = [got] == expected
            except Exception as exc:
                got, ok = f"{type(exc).__name__}: {exc}", False
            if not ok:
                failures.append(f"solution {k} test {t}: expected {expected!r}, got {got!r}")
    return failures


# --------------------------------------------------------------------------------------- writing


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def write_problem(p: GeneratedProblem, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "question.txt").write_text(p.question, encoding="utf-8")
    (folder / "input_output.json").write_text(_dump(p.input_output()), encoding="utf-8")
    (folder / "solutions.json").write_text(_dump(p.solutions), encoding="utf-8")
    (folder / "metadata.json").write_text(_dump(p.metadata()), encoding="utf-8")
    (folder / "example_tests.json").write_text(_dump(p.example_tests()), encoding="utf-8")
    if p.starter_code:
        (folder / "starter_code.py").write_text(p.starter_code, encoding="utf-8")


def describe(cfg: BenchmarkConfig, problems: dict[str, list[GeneratedProblem]]) -> dict[str, Any]:
    """The contents of ``benchmark.json``: the configuration, the held-out pairs and counts."""
    held = heldout_pairs(cfg.seed, cfg.heldout_fraction)
    counts: dict[str, dict[str, int]] = {}
    for split, ps in problems.items():
        c: dict[str, int] = {"problems": len(ps)}
        for p in ps:
            for key in (p.difficulty, p.family, p.format):
                c[key] = c.get(key, 0) + 1
        counts[split] = c
    return {
        "name": cfg.name,
        "version": BENCHMARK_VERSION,
        "seed": cfg.seed,
        "n_train": cfg.n_train,
        "n_test": cfg.n_test,
        "n_val": cfg.n_val,
        "n_hidden": cfg.n_hidden,
        "n_examples": cfg.n_examples,
        "heldout_fraction": cfg.heldout_fraction,
        "heldout_pairs": {f: sorted(list(pair) for pair in held[f]) for f in FAMILIES},
        "counts": counts,
    }


def folder_name(index: int, total: int) -> str:
    return str(index).zfill(max(4, len(str(max(total - 1, 0)))))


def write_benchmark(cfg: BenchmarkConfig, out_dir: str | Path) -> dict[str, Any]:
    """Generate and write ``out_dir/train/0000/...``, ``out_dir/test/0000/...`` and
    ``out_dir/benchmark.json``; return the description."""
    out = Path(out_dir)
    problems = generate(cfg)
    for split, ps in problems.items():
        for p in ps:
            write_problem(p, out / split / folder_name(p.index, len(ps)))
    info = describe(cfg, problems)
    (out / "benchmark.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return info
