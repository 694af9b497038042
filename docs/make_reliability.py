"""Measure what docs/reliability.md reports and write it there.

    $ .venv/bin/python docs/make_reliability.py            # everything but the fault runs
    $ .venv/bin/python docs/make_reliability.py --table    # only the degenerate-sizes table
    $ .venv/bin/python docs/make_reliability.py --faults   # also run the fault tests (minutes)
    $ .venv/bin/python docs/make_reliability.py --only-faults  # only the fault tests' table

It runs the generators of tests/reliability (fuzzkit, mutations, degenerate) with fixed seeds,
so the same command gives the same counts: edit sequences of schedules and of lowered programs
(judged by the independent oracles), damaged files and argument lists through the command line
(in this process), and the degenerate-sizes sweep. Anything unexpected (a crash, an unclear
refusal, a verdict that disagrees with its oracle) is counted and printed, and makes the script
exit 1. The sections between ``<!-- name -->`` and ``<!-- /name -->`` markers are replaced;
tests/reliability/test_degenerate.py checks that the table is current.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
sys.path.insert(0, str(ROOT / "tests" / "reliability"))

import degenerate  # noqa: E402
import fuzzkit  # noqa: E402
import mutations  # noqa: E402

from pipeblocks.errors import DeadlockError, ScheduleError  # noqa: E402
from pipeblocks.generators import generate  # noqa: E402
from pipeblocks.ir import validate  # noqa: E402
from pipeblocks.ir.lowering import lower  # noqa: E402
from pipeblocks.sim.deadlock import check  # noqa: E402

BAD: list[str] = []  # every unexpected outcome, printed at the end


def schedule_campaign(runs: int) -> Counter[str]:
    cases = list(mutations.cases())
    seen: Counter[str] = Counter()
    for seed in range(runs):
        rng = random.Random(seed)
        case = rng.choice(cases)
        bad = mutations.mutate_schedule(rng, generate(*case), rng.randint(1, 8))
        expected = mutations.rule_oracle(bad)
        try:
            validate(bad)
            got = None
        except ScheduleError as e:
            got = e.rule
        except Exception as e:  # noqa: BLE001 - counted, the point of the campaign
            BAD.append(f"schedule seed {seed}: {type(e).__name__}: {e}")
            continue
        if (got is None) != (expected is None) or (expected is not None and got not in expected):
            BAD.append(f"schedule seed {seed}: validate says {got}, the oracle {expected}")
        seen[got or "valid"] += 1
    return seen


def lowered_campaign(runs: int) -> Counter[str]:
    cases = [c for c in mutations.cases() if c[1] > 1]
    lowered = {c: lower(generate(*c)) for c in cases}
    seen: Counter[str] = Counter()
    for seed in range(runs):
        rng = random.Random(seed)
        case = rng.choice(cases)
        bad = mutations.mutate_lowered(rng, lowered[case], rng.randint(1, 4))
        try:
            check(bad)
            got = None
        except ScheduleError as e:
            got = e.rule
        except DeadlockError:
            got = "deadlock"
        except Exception as e:  # noqa: BLE001
            BAD.append(f"lowered seed {seed}: {type(e).__name__}: {e}")
            continue
        if (got is None) != (mutations.fifo_run(bad) is None):
            BAD.append(f"lowered seed {seed}: check says {got}, the FIFO model disagrees")
        seen[got or "runs"] += 1
    return seen


def _judge(argv: list[str], must_fail: bool, tally: Counter[str], tag: str,
           folder: Path) -> None:
    try:
        o = fuzzkit.run_cli(argv, cwd=folder)  # relative output files land in the temp folder
    except BaseException as e:  # noqa: BLE001
        BAD.append(f"{tag}: {argv[:8]}: crash {type(e).__name__}: {e}\n"
                   + "".join(traceback.format_exception(e)[-3:]))
        tally["crash"] += 1
        return
    if o.code == 0 and not must_fail:
        tally["accepted"] += 1
        return
    problems = fuzzkit.failure_problems(o)
    if problems:
        BAD.append(f"{tag}: {argv[:8]}: {problems}")
        tally["unclear"] += 1
    else:
        tally[f"refused, exit {o.code}"] += 1


def input_campaign(runs: int) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {k: Counter() for k in
                                    ("schedule files", "costs files", "random arguments",
                                     "nearly valid arguments")}
    targets = (("zb-h1", 4, None), ("zb-v", 2, None), ("interleaved-1f1b", 2, 2))
    with tempfile.TemporaryDirectory() as tmp, fuzzkit.no_launch():
        folder = Path(tmp)
        fuzzkit.write_fixtures(folder)
        commands = sorted(fuzzkit.commands())
        for seed in range(runs):
            rng = random.Random(seed)
            name, data, must = fuzzkit.bad_schedule_file(rng)
            path = folder / name
            path.write_bytes(data)
            for argv in (["validate", str(path)], ["simulate", "--schedule", str(path)]):
                _judge(argv, must, out["schedule files"], f"schedule file seed {seed}",
                       folder)
            gen, p, v = rng.choice(targets)
            spec = generate(gen, p, 4, v).spec
            name, data, must = fuzzkit.bad_costs_file(rng, spec.num_stages, spec.num_ranks)
            path = folder / name
            path.write_bytes(data)
            argv = ["simulate", gen, "-p", str(p), "-m", "4", "--costs", str(path)]
            argv += ["--stages-per-rank", str(v)] if v else []
            _judge(argv, must, out["costs files"], f"costs file seed {seed}", folder)
            cmd = commands[seed % len(commands)]
            _judge(fuzzkit.random_argv(rng, cmd, folder), False, out["random arguments"],
                   f"argv seed {seed}", folder)
            _judge(fuzzkit.near_valid_argv(rng, folder), False, out["nearly valid arguments"],
                   f"near-valid seed {seed}", folder)
    return out


def _count_table(title: str, rows: dict[str, Counter[str]]) -> str:
    keys = sorted({k for c in rows.values() for k in c})
    head = f"| {title} | tried | " + " | ".join(keys) + " |"
    lines = [head, "|---|---|" + "---|" * len(keys)]
    for name, c in rows.items():
        lines.append(f"| {name} | {sum(c.values())} | " + " | ".join(str(c[k]) for k in keys)
                     + " |")
    return "\n".join(lines)


# The faults each test injects (see the tests' docstrings).
INJECTED = {
    "test_a_rank_killed_mid_run_stops_all_and_the_run_resumes": 1,  # SIGKILL in a step
    "test_a_rank_killed_while_saving_leaves_the_previous_checkpoint": 1,  # SIGKILL in a save
    "test_a_damaged_checkpoint_stops_every_rank_naming_the_reader": 1,  # a file cut in half
    "test_a_fault_in_a_pass_keeps_the_checkpoints[raise]": 1,  # a pass raises
    "test_killed_at_random_moments_a_whole_checkpoint_remains": 12,  # SIGKILLs
    "test_a_save_that_fails_midway_leaves_the_last_checkpoint": 1,  # OSError in a save
    "test_loading_unpickles_no_foreign_object": 1,  # a planted os.system
    # issue 14: data loss, checksums, changed options, damaged files (test_manifest.py)
    "test_a_save_never_deletes_what_it_just_wrote": 1,  # another run's higher steps
    "test_a_fresh_run_is_refused_in_another_runs_folder": 1,
    "test_a_flipped_block_is_refused_naming_the_file[__0_0.distcp]": 1,  # 4 KiB inverted
    "test_a_flipped_block_is_refused_naming_the_file[.metadata]": 1,
    **{f"test_a_damaged_checkpoint_exits_1_whichever_file[{k}]": 1 for k in (
        "latest-binary", "latest-missing", "manifest", "metadata", "tensors")},
    "test_latest_is_never_guessed_around": 1,  # a binary latest
    "test_tensors_unlike_their_manifest_are_damage": 1,
    **{f"test_a_resume_that_changes_the_data_or_math_is_refused[{k}]": 1 for k in (
        "seed", "lr", "batch")},
    # faults a run must not hide, real processes (test_train_faults.py)
    "test_a_non_finite_loss_stops_the_run_naming_step_rank_and_stage": 1,  # --lr 1e30
    "test_a_flipped_block_in_a_ranks_file_is_refused_before_training": 1,
    "test_a_frozen_rank_is_named_as_stuck_not_as_a_cycle[1]": 1,  # SIGSTOP
    "test_a_frozen_rank_is_named_as_stuck_not_as_a_cycle[2]": 1,
    "test_a_model_too_large_gives_one_line_per_rank": 1,  # --seq 10**12
    "test_a_killed_launcher_leaves_one_line_per_rank_and_no_cpp_stacks": 1,  # SIGKILL
    # an optional dependency missing (tests/cli/test_missing_extras.py): one line, exit 1
    **{f"test_a_missing_dependency_is_one_line_naming_the_extra[{k}]": 1 for k in (
        "matplotlib-cli-argv0-plot", "matplotlib-cli-argv1-plot", "torch-cli-argv2-torch",
        "torch-cli-argv3-torch", "torch-pipeblocks.train-argv4-torch")},
    "test_the_library_names_the_extra_too": 1,
}
FAULT_TESTS = ["tests/reliability/test_faults.py", "tests/reliability/test_checkpoint.py",
               "tests/reliability/test_manifest.py", "tests/reliability/test_train_faults.py",
               "tests/cli/test_missing_extras.py"]


def fault_runs() -> str:
    """Run the fault and checkpoint tests; one row per test with its outcome and time."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "--durations=0", "-p", "no:cacheprovider",
           "-p", "no:randomly", *FAULT_TESTS]
    start = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    took = time.monotonic() - start
    outcome = {test: status for status, test in re.findall(
        r"^(PASSED|FAILED|ERROR) \S+::(\S+)", res.stdout, re.M)}
    seconds: Counter[str] = Counter()  # setup (the module fixtures' runs) and call
    for sec, test in re.findall(r"^([\d.]+)s (?:setup|call) +\S+::(\S+)", res.stdout, re.M):
        seconds[test] += float(sec)
    if res.returncode:  # the assertion lines (pytest's "E" lines), then the summary
        why = "\n".join(ln for ln in res.stdout.splitlines() if ln.startswith("E "))
        BAD.append("fault tests failed:\n" + why[-6000:] + "\n" + res.stdout[-1500:])
    rows = ["| test | faults injected | outcome | seconds |", "|---|---|---|---|"]
    survived = 0
    for test, status in outcome.items():
        n = INJECTED.get(test, 0)
        survived += n if status == "PASSED" else 0
        rows.append(f"| `{test}` | {n or ''} | {status.lower()} | {seconds[test]:.1f} |")
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    return ("\n".join(rows) + f"\n\nFaults injected and survived (every rank stopped, named "
            f"the cause in one line per rank, nothing hung, no traceback, the last checkpoint "
            f"whole, no wrong result reported as a success): {survived} of "
            f"{sum(INJECTED.values())}. "
            f"`{summary}` ({took:.0f} s wall on this machine; the seconds include each module "
            f"fixture's runs in its first test).")


def _replace(text: str, marker: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {marker} -->\n).*?(<!-- /{marker} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"docs/reliability.md lacks the <!-- {marker} --> markers")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", action="store_true", help="only the degenerate-sizes table")
    ap.add_argument("--faults", action="store_true", help="also run the fault tests")
    ap.add_argument("--only-faults", action="store_true",
                    help="only the fault tests (the other sections stay as they are)")
    ap.add_argument("--runs", type=int, default=2000, help="seeds per campaign (default 2000)")
    args = ap.parse_args()
    text = DOC.read_text()
    if args.only_faults:
        DOC.write_text(_replace(text, "faults", fault_runs()))
        print("\n".join(BAD), file=sys.stderr)
        return 1 if BAD else 0
    text = _replace(text, "degenerate-table", degenerate.table())
    if not args.table:
        start = time.monotonic()
        sweep = degenerate.sweep()
        ok, tried = sum(a for a, _ in sweep.values()), sum(b for _, b in sweep.values())
        figures = [
            f"Measured by `.venv/bin/python docs/make_reliability.py --runs {args.runs}` "
            f"(seeds 0..{args.runs - 1}; the same command gives the same counts).",
            "",
            _count_table("validator: edit sequences", {"rule reported": schedule_campaign(
                args.runs)}),
            "",
            _count_table("deadlock check: lowered edits", {"verdict": lowered_campaign(
                args.runs)}),
            "",
            _count_table("command line", input_campaign(args.runs)),
            "",
            f"Degenerate-sizes sweep (p 1..5, m 1..2p+1, v default/1/2/3, every generator): "
            f"{tried} sizes tried, {ok} built and fully checked, {tried - ok} refused with a "
            f"clear SpecError, 0 other outcomes.",
            "",
            f"Unexpected outcomes (crashes, unclear refusals, verdicts that disagree with their "
            f"oracle): {len(BAD)}. Took {time.monotonic() - start:.0f} s.",
        ]
        text = _replace(text, "figures", "\n".join(figures))
    if args.faults:
        text = _replace(text, "faults", fault_runs())
    DOC.write_text(text)
    for line in BAD:
        print(line, file=sys.stderr)
    print(f"wrote {DOC.relative_to(ROOT)}; {len(BAD)} unexpected outcomes")
    return 1 if BAD else 0


if __name__ == "__main__":
    sys.exit(main())
