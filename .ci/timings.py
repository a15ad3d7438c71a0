"""Write tests/slow_tests.txt and tests/test_times.txt from a timed full run.

Run the whole suite with `--junitxml=full.xml`, then `python .ci/timings.py full.xml`.

- tests/slow_tests.txt: the tests left out of the fast lane (`make test-fast`), so that
  the lane's measured time stays under its budget: whole modules (their fixtures cost the
  same for one test as for all), cheapest first, without the tests already marked slow,
  are kept up to the budget; every other test is listed.
- tests/test_times.txt: the measured seconds of every module, and of every test of a
  module long enough to be spread across processes (tests/conftest.py).
"""

import argparse
import collections
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def _nodeid(case):
    """The pytest node id of a junit testcase (classname 'tests.zoo.test_zoo[.Class]')."""
    parts = case.get("classname").split(".")
    path = []
    while parts:
        path.append(parts.pop(0))
        if os.path.isfile(os.path.join(TESTS, "..", *path) + ".py"):
            break
    name = case.get("name").split("@")[0]  # xdist's loadgroup appends "@group"
    return "::".join(["/".join(path) + ".py", *parts, name])


def _marked_slow():
    """Tests marked slow in their own code (not by the list this script writes)."""
    env = dict(os.environ, TFCOMPRESS_IGNORE_SLOW_LIST="1")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-m",
            "slow",
            "-p",
            "no:cacheprovider",
        ],
        cwd=os.path.dirname(TESTS),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.strip() for line in out.splitlines() if "::" in line}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit", help="junit XML of a full, timed run")
    parser.add_argument("--budget", type=float, default=115.0, help="fast-lane test-seconds")
    parser.add_argument("--split", type=float, default=240.0, help="see tests/conftest.py")
    args = parser.parse_args(argv)
    times = {}
    for case in ET.parse(args.junit).getroot().iter("testcase"):
        nodeid = _nodeid(case)
        times[nodeid] = times.get(nodeid, 0.0) + float(case.get("time", 0))
    modules = collections.Counter()
    for nodeid, seconds in times.items():
        modules[nodeid.split("::")[0]] += seconds
    # Whole modules, cheapest first: a module's fixtures are paid by whichever of its
    # tests runs first, so keeping some of its tests costs the fixture all the same.
    marked = _marked_slow()
    spent, fast = 0.0, set()
    lane = collections.defaultdict(list)
    for nodeid in times:
        if nodeid not in marked:
            lane[nodeid.split("::")[0]].append(nodeid)
    for nodeids in sorted(lane.values(), key=lambda ids: sum(times[n] for n in ids)):
        seconds = sum(times[n] for n in nodeids)
        if spent + seconds > args.budget:
            break
        spent += seconds
        fast.update(nodeids)
    slow = sorted(set(times) - fast)
    with open(os.path.join(TESTS, "slow_tests.txt"), "w", encoding="utf-8") as f:
        f.write(
            f"# Written by .ci/timings.py: tests left out of the fast lane ({len(fast)} tests, "
            f"{spent:.0f} s measured, stay in it).\n"
        )
        f.writelines(f"{nodeid}\n" for nodeid in slow)
    with open(os.path.join(TESTS, "test_times.txt"), "w", encoding="utf-8") as f:
        f.write("# Written by .ci/timings.py: measured seconds per module (and per test of a\n")
        f.write("# module spread across processes), read by tests/conftest.py.\n")
        for module, seconds in modules.most_common():
            f.write(f"{seconds:.1f} {module}\n")
            if seconds > args.split:
                for nodeid in sorted(n for n in times if n.startswith(module + "::")):
                    f.write(f"{times[nodeid]:.1f} {nodeid}\n")
    print(
        f"fast lane: {len(fast)} tests, {spent:.0f} s; slow: {len(slow)}; modules: {len(modules)}"
    )


if __name__ == "__main__":
    main()
