"""Tasks that are not all alike: ``#taskfarmer`` directives for cores, GPUs, runners and outputs (issue 11)."""

from __future__ import annotations

import itertools
import json
import os
from typing import TYPE_CHECKING

import pytest

from tests.helpers import ids, lines, run_farmer, write_tasklist

if TYPE_CHECKING:
    from pathlib import Path

# Each task records when it ran, which core slots and CPUs it was bound to, and its GPUs.
# Each task appends its record in one write: print() makes two (the line, then its newline) when PYTHONUNBUFFERED
# is set, and the records of tasks ending together would interleave.
_RECORD = (
    'python3 -c "import json, os, time; s = time.time(); time.sleep({sleep});'
    " os.write(1, (json.dumps({{'task': {task}, 'start': s, 'end': time.time(),"
    " 'slots': os.environ.get('TASKFARMER_CORE_SLOTS', ''), 'cpus': sorted(os.sched_getaffinity(0)),"
    " 'omp': os.environ.get('OMP_NUM_THREADS'), 'gpus': os.environ.get('CUDA_VISIBLE_DEVICES', '')}})"
    ' + chr(10)).encode())"'
    " >> {out}"
)


def _records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines(out)]


def _overlapping(records: list[dict[str, object]]) -> list[tuple[dict[str, object], dict[str, object]]]:
    def overlap(a: dict[str, object], b: dict[str, object]) -> bool:
        return float(str(a["start"])) < float(str(b["end"])) and float(str(b["start"])) < float(str(a["end"]))

    return [(a, b) for a, b in itertools.combinations(records, 2) if overlap(a, b)]


@pytest.mark.timeout(120)
def test_four_core_and_one_core_tasks_never_use_more_than_proc_cores(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    sizes = [4, 1, 1, 4, 1, 1, 1, 4, 1, 1, 4, 1, 1, 1, 1, 4, 1, 1]
    tasks = [
        _RECORD.format(sleep=0.4, task=i, out=out) + f" #taskfarmer cores={cores}" for i, cores in enumerate(sizes)
    ]
    tasklist = write_tasklist(tmp_path / "t.txt", tasks)
    result = run_farmer(tasklist, "-n", "8", "-q")
    assert result.returncode == 0, result.stderr
    records = _records(out)
    assert sorted(int(str(r["task"])) for r in records) == list(range(len(sizes)))
    cpus = sorted(os.sched_getaffinity(0))
    for record in records:
        slots = [int(slot) for slot in str(record["slots"]).split(",")]
        assert len(slots) == sizes[int(str(record["task"]))]
        assert record["omp"] == str(len(slots))
        assert record["cpus"] == sorted({cpus[slot % len(cpus)] for slot in slots})  # its affinity mask
    # At any instant, the tasks running hold disjoint slots, at most 8 together.
    for start in (float(str(r["start"])) for r in records):
        running = [r for r in records if float(str(r["start"])) <= start < float(str(r["end"]))]
        held = [int(slot) for r in running for slot in str(r["slots"]).split(",")]
        assert len(held) == len(set(held)) <= 8, running
    assert any(len(str(r["slots"]).split(",")) == 4 for pair in _overlapping(records) for r in pair)


@pytest.mark.timeout(120)
def test_gpu_tasks_get_their_own_gpus_and_a_task_too_big_is_left_for_others(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    tasks = [_RECORD.format(sleep=0.3, task=i, out=out) + " #taskfarmer gpus=2" for i in range(6)]
    tasks.append("echo never #taskfarmer gpus=8")
    tasklist = write_tasklist(tmp_path / "t.txt", tasks)
    result = run_farmer(tasklist, "-n", "4", "--gpus", "g0,g1,g2,g3", "-q")
    assert result.returncode == 3, result.stderr
    assert "the next task needs more cores, GPUs or time than this farmer has" in result.stderr
    workdir = tmp_path / "t.txt_workdir"
    assert ids(workdir / "toprocess") == [6]  # left for a farmer with 8 GPUs
    records = _records(out)
    assert len(records) == 6
    for record in records:
        assert len(str(record["gpus"]).split(",")) == 2
    for a, b in _overlapping(records):
        assert not set(str(a["gpus"]).split(",")) & set(str(b["gpus"]).split(",")), (a, b)


@pytest.mark.timeout(60)
def test_a_list_mixing_runners(tmp_path: Path, taskfarmer_home: Path) -> None:
    (taskfarmer_home / "runners.d" / "stages.ini").write_text(
        "[reco]\nRunner = BasicRunner\nvariables = STAGE=reco\n\n"
        "[ana]\nRunner = BasicRunner\nsetup = export STAGE=ana\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    tasklist = write_tasklist(
        tmp_path / "t.txt",
        [
            f'echo "$STAGE" > {out}/0 #taskfarmer runner=reco',
            f'echo "$STAGE" > {out}/1 #taskfarmer runner=ana',
            f'echo "${{STAGE:-none}}" > {out}/2',
            f"echo x > {out}/3 #taskfarmer runner=nosuch",
        ],
    )
    result = run_farmer(tasklist, "-n", "1", "-q")
    assert result.returncode == 1, result.stderr
    assert [(out / str(i)).read_text().strip() for i in range(3)] == ["reco", "ana", "none"]
    failed = lines(tmp_path / "t.txt_workdir" / "failed")
    assert len(failed) == 1
    assert failed[0].startswith("3 invalid:directive ")
    assert "nosuch" in (tmp_path / "t.txt_workdir" / "logs" / "log_3").read_text()


@pytest.mark.timeout(60)
def test_skip_existing_outputs_and_missing_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    runs = tmp_path / "runs"
    make = f"echo $PROC_NUMBER >> {runs}; echo data > {out}/{{#}}.root #taskfarmer outputs={out}/{{#}}.root"
    tasks = [make.replace("{#}", str(i)) for i in range(4)]
    tasks.append(f"echo $PROC_NUMBER >> {runs} #taskfarmer outputs={out}/never.root")
    tasklist = write_tasklist(tmp_path / "t.txt", tasks)
    (out / "1.root").write_text("made before\n")
    (out / "2.root").write_text("")  # empty: not an output
    result = run_farmer(tasklist, "-n", "2", "-q", "--skip-existing")
    assert result.returncode == 1, result.stderr
    workdir = tmp_path / "t.txt_workdir"
    assert sorted(ids(workdir / "finished")) == [0, 1, 2, 3]
    assert sorted(int(x) for x in lines(runs)) == [0, 2, 3, 4]  # task 1 was not run
    assert (out / "1.root").read_text() == "made before\n"
    assert [line.split(" ", 2)[:2] for line in lines(workdir / "failed")] == [["4", "missing:outputs"]]
    accounting = [line.split("\t") for line in lines(workdir / "accounting.tsv")[1:]]
    assert {row[0]: row[2] for row in accounting} == {
        "0": "ok",
        "1": "skipped:outputs",
        "2": "ok",
        "3": "ok",
        "4": "missing:outputs",
    }
    log = workdir / "logs" / "log_4"  # it printed nothing: what it lacks is said in its log
    assert log.read_text() == f"pytaskfarmer: missing:outputs: absent or empty: {out}/never.root\n"
