"""Stage locks (tvaccine.locks) and sweeps shared by several workers (``tvaccine sweep --shard I/N``)."""

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline import pack, run_config  # noqa: F401  (pack: a fixture)

from tvaccine.cli import main
from tvaccine.errors import UserError
from tvaccine.locks import FileLock, LockTiming
from tvaccine.pipeline import SUMMARY_COLUMNS, parse_shard

REPO = Path(__file__).resolve().parents[1]
FAST = LockTiming(stale_after_s=0.5)  # heartbeat every 0.05 s, polls every 0.05 s


def quiet(path, timing=FAST, messages=None) -> FileLock:
    return FileLock(path, timing, echo=(messages.append if messages is not None else None))


def acquire_in_thread(lock: FileLock) -> threading.Event:
    taken = threading.Event()
    threading.Thread(target=lambda: (lock.acquire(), taken.set()), daemon=True).start()
    return taken


def test_lock_is_exclusive_and_records_its_owner(tmp_path):
    path = tmp_path / "stages" / "align-x.lock"  # its folder is created
    first, second = quiet(path, LockTiming(5)), quiet(path, LockTiming(5))
    first.acquire()
    info = json.loads(path.read_text())
    assert info["pid"] == os.getpid() and info["token"] == first.token and info["host"]
    taken = acquire_in_thread(second)
    assert not taken.wait(0.5)  # held: the second waits
    first.release()
    assert taken.wait(5)  # released: the second takes it
    assert json.loads(path.read_text())["token"] == second.token
    second.release()
    assert not path.exists()


def test_heartbeat_keeps_a_long_held_lock_from_going_stale(tmp_path):
    path = tmp_path / "a.lock"
    timing = LockTiming(stale_after_s=1.0)  # slack for a loaded machine: ten heartbeats per timeout
    messages = []
    waiter = quiet(path, timing, messages)
    with quiet(path, timing):
        start = path.stat().st_mtime
        taken = acquire_in_thread(waiter)
        assert not taken.wait(3 * timing.stale_after_s)  # held three timeouts long: never taken over
        assert path.stat().st_mtime > start  # the heartbeat moved it
    assert taken.wait(5)
    waiter.release()
    assert messages and all("waiting" in m for m in messages)


def test_a_stale_lock_is_taken_over_and_its_late_owner_leaves_the_new_one(tmp_path):
    path = tmp_path / "a.lock"
    crashed = quiet(path)
    crashed.acquire()
    crashed._stop.set()  # as if its process had died: no more heartbeats
    crashed._beat.join()
    messages = []
    start = time.monotonic()
    taker = quiet(path, messages=messages)
    assert acquire_in_thread(taker).wait(10)  # (a thread, so that a lock never taken over fails, not hangs)
    assert time.monotonic() - start >= FAST.stale_after_s * 0.8  # not before the heartbeat went stale
    assert any("stale lock" in m and str(os.getpid()) in m for m in messages)
    assert json.loads(path.read_text())["token"] == taker.token
    crashed.release()  # a late release by the old owner must not free the new owner's lock
    assert path.exists()
    taker.release()
    assert not path.exists()
    assert not list(tmp_path.glob("a.lock.stale-*"))


def test_a_stale_lock_left_half_written_is_taken_over(tmp_path):
    path = tmp_path / "a.lock"
    path.write_text("")  # its writer died between creating and writing it
    old = time.time() - 10
    os.utime(path, (old, old))
    lock = quiet(path)
    assert acquire_in_thread(lock).wait(10)
    assert json.loads(path.read_text())["token"] == lock.token
    lock.release()


def test_breaking_leaves_a_lock_that_is_not_the_stale_one_seen(tmp_path):
    path = tmp_path / "a.lock"
    path.write_text("{}")
    old = time.time() - 10
    os.utime(path, (old, old))
    seen = os.stat(path)
    os.unlink(path)
    with quiet(path, LockTiming(60)) as fresh:  # a new owner took the lock after the stale one was seen
        assert not quiet(path)._break(seen)
        assert json.loads(path.read_text())["token"] == fresh.token


def test_a_lock_of_a_killed_process_on_this_machine_is_taken_over_at_once(tmp_path):
    # The owner dies without releasing (as under SIGKILL or the OOM killer); its heartbeat would stay fresh-looking
    # for the whole timeout, but its PID is gone from this machine's PID namespace.
    path = tmp_path / "stage.lock"
    code = f"import os; from tvaccine.locks import FileLock; FileLock({str(path)!r}, echo=None).acquire(); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert json.loads(path.read_text())["pid"] != os.getpid()
    messages = []
    taken = acquire_in_thread(quiet(path, LockTiming(stale_after_s=300), messages))
    assert taken.wait(10), "waited for the timeout although the owner is dead"
    assert "its process is gone" in messages[0]


def test_a_lock_of_a_live_process_is_not_taken_over(tmp_path):
    path = tmp_path / "stage.lock"
    code = (f"import sys, time; from tvaccine.locks import FileLock; FileLock({str(path)!r}, echo=None).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        assert owner.stdout.readline().strip() == "held"
        taken = acquire_in_thread(quiet(path, LockTiming(stale_after_s=300)))
        assert not taken.wait(1.0)
    finally:
        owner.kill()
        owner.wait()
    assert taken.wait(10)  # and once it is killed, at once


def test_lock_is_released_on_an_exception_and_its_heartbeat_stops(tmp_path):
    path = tmp_path / "a.lock"
    with pytest.raises(RuntimeError), quiet(path) as lock:
        beat = lock._beat
        raise RuntimeError("stage failed")
    assert not path.exists() and not beat.is_alive()


def test_an_owner_whose_lock_was_taken_notices_and_keeps_its_hands_off(tmp_path):
    path = tmp_path / "a.lock"
    owner = quiet(path)
    owner.acquire()
    path.unlink()  # taken over while the owner stalled
    other = quiet(path)
    other.acquire()
    time.sleep(3 * FAST.heartbeat_s)
    assert owner.lost
    owner.release()
    assert json.loads(path.read_text())["token"] == other.token
    other.release()


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1/0", "1", "a/b", "0/4/1", "", "1.5/4"])
def test_bad_shards_are_named(text, tmp_path, capsys):
    with pytest.raises(UserError, match="--shard"):
        parse_shard(text)
    assert main(["sweep", "--config", str(tmp_path / "none.yaml"), f"--shard={text}"]) == 2
    assert "--shard" in capsys.readouterr().err


def test_shards_are_zero_based():
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4) and parse_shard("0/1") == (0, 1)


def test_bad_stale_timeout_is_named(tmp_path, capsys):
    assert main(["sweep", "--config", str(tmp_path / "none.yaml"), "--stale-after", "0"]) == 2
    assert "--stale-after" in capsys.readouterr().err


# Columns of summary.csv that measure the run (seconds, memory) rather than what it computed.
TIMING_COLUMNS = {"align_s", "attack_s", "eval_s", "align_peak_rss_mb", "attack_peak_rss_mb"}


def test_two_workers_share_a_sweep_and_compute_every_stage_once(tiny_model_dir, pack, tmp_path):  # noqa: F811
    """Two `tvaccine sweep --shard` processes on one sweep folder: the alignment all three cells share is computed
    once (one worker waits for the other), each cell's attack by the worker of its shard (cell index modulo 2),
    and the summary and analysis files equal those of one process."""
    base = run_config(tiny_model_dir, pack, "sweep")  # relative: the stage folders (and hashes) match across runs
    base["eval"]["before_attack"] = False
    sweep = {"base": base, "grid": {"poison_ratio": [0.125, 0.25, 0.5]}}
    for name in ("sharded", "single"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    log = tmp_path / "stages.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ALIGN_DELAY": "2"}
    workers = [subprocess.Popen([sys.executable, str(REPO / "tests" / "sweep_worker.py"), str(log), "sweep",
                                 "--config", "sweep.yaml", "--shard", f"{i}/2", "--stale-after", "5"],
                                cwd=tmp_path / "sharded", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for i in range(2)]
    cwd = os.getcwd()
    try:  # the reference, in this process while the workers run
        os.chdir(tmp_path / "single")
        assert main(["sweep", "--config", "sweep.yaml"]) == 0
        os.chdir(cwd)
        outputs = [w.communicate(timeout=300)[0] for w in workers]
    finally:
        os.chdir(cwd)
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert [w.returncode for w in workers] == [0, 0], outputs

    computed = [line.split("\t") for line in log.read_text().splitlines()]
    folders = [Path(folder).name for _, folder, _ in computed]
    assert len(folders) == len(set(folders)), computed  # no stage twice
    stages = tmp_path / "sharded" / "sweep" / "stages"
    assert sorted(folders) == sorted(p.name for p in stages.iterdir() if p.is_dir())  # and every stage once
    assert [kind for kind, _, _ in computed].count("align") == 1
    waited = [line for out in outputs for line in out.splitlines() if "/align-" in line and "waiting" in line]
    assert waited  # the alignment's lock was contended
    assert not list(stages.glob("*.lock")) and not list((tmp_path / "sharded" / "sweep").glob("*.lock"))

    def read(name: str, file: str) -> list[dict]:
        return list(csv.DictReader(open(tmp_path / name / "sweep" / file)))

    sharded, single = read("sharded", "summary.csv"), read("single", "summary.csv")
    assert [r["poison_ratio"] for r in sharded] == ["0.125", "0.25", "0.5"]
    kept = [c for c in SUMMARY_COLUMNS if c not in TIMING_COLUMNS]
    assert [{c: r[c] for c in kept} for r in sharded] == [{c: r[c] for c in kept} for r in single]
    pids = {Path(folder).name: pid for kind, folder, pid in computed if kind == "attack"}
    worker_pids = [str(w.pid) for w in workers]
    assert [pids[Path(r["attack_dir"]).name] for r in sharded] == [worker_pids[i % 2] for i in range(3)]
    for file in ("curves.csv", "aggregate.csv", "differences.csv", "auc.csv"):
        assert read("sharded", file) == read("single", file), file
