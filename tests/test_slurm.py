"""The grid through submitit: its local and in-process executors in the normal
suite, and (marked slow) a real single-node SLURM cluster on localhost."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from trainer.scheduler import run_grid
from trainer.spec import load_spec, parse_spec
from trainer.slurm import submit_grid
from _trainer_corpus import corpus_root

torch.set_num_threads(1)
MICRO = Path(__file__).parents[1] / "trainer" / "specs" / "micro.toml"


def curves(out: Path) -> dict:
    return {p.name: json.loads(p.read_text())["result"]["curve_loss"] for p in (out / "runs").glob("*.json")}


def test_local_executor_matches_the_in_process_grid(tmp_path):
    root = corpus_root(tmp_path)
    sp = load_spec(MICRO)
    ref = run_grid(sp, tmp_path / "ref", root, device="cpu")
    got = submit_grid(sp, tmp_path / "local", root, executor="local", chunk=2, timeout_min=10, device="cpu")
    assert ref["complete"] and got["complete"] and got["finished_runs"] == 12
    assert curves(tmp_path / "ref") == curves(tmp_path / "local")
    # A re-submission finds nothing to do.
    again = submit_grid(sp, tmp_path / "local", root, executor="inprocess", device="cpu")
    assert again["finished_runs"] == 0 and again["complete"]


def test_unknown_executor_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown executor 'pbs'"):
        submit_grid(load_spec(MICRO), tmp_path, corpus_root(tmp_path), executor="pbs")


# --- a real SLURM on localhost: slurm-wlm + munge from Debian, one node on 127.0.0.1 ---
SLURM_CONF = """ClusterName=local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={port}
SlurmdPort={port2}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _installed() -> bool:
    return all(shutil.which(t) for t in ("slurmctld", "slurmd", "sbatch", "munged"))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if not _installed() and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"], capture_output=True, timeout=900)
    if not _installed() or os.geteuid() != 0:
        pytest.skip("slurm-wlm and munge are not installable here (needs root and apt)")
    d = tmp_path_factory.mktemp("slurm")
    (d / "state").mkdir()
    (d / "spool").mkdir()
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(d=d, port=16917, port2=16918, cpus=os.cpu_count()))
    env = dict(os.environ, SLURM_CONF=str(conf))
    started = []
    if not Path("/run/munge/munge.socket.2").exists():
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["mungekey", "--create"], check=True)
        Path("/run/munge").mkdir(exist_ok=True)
        subprocess.run(["munged", "--force"], check=True, capture_output=True)
        started.append(Path("/run/munge/munged.pid"))
    subprocess.run(["slurmctld"], env=env, check=True)
    subprocess.run(["slurmd"], env=env, check=True)
    started += [d / "slurmctld.pid", d / "slurmd.pid"]
    t0 = time.time()
    while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout:
        if time.time() - t0 > 60:
            pytest.fail("the local SLURM node did not come up: " + (d / "slurmctld.log").read_text()[-500:])
        time.sleep(0.5)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    yield d
    # Let the jobs' steps end while the controller is still up, else srun waits on it forever.
    t0 = time.time()
    while subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
        if time.time() - t0 > 30:
            subprocess.run(["scancel", "--full", "--user=root"], env=env)
            break
        time.sleep(0.5)
    if old is None:
        os.environ.pop("SLURM_CONF")
    else:
        os.environ["SLURM_CONF"] = old
    for pid_file in reversed(started):
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass


@pytest.mark.slow
def test_two_run_grid_on_a_real_slurm(slurm, tmp_path):
    root = corpus_root(tmp_path)
    sp = parse_spec({"name": "two", "grid": {"sizes": ["25k"], "targets": ["python"], "sources": ["none"],
                                             "data_tokens": [4096], "seeds": [0, 1]},
                     "train": {"batch": 2, "eval_interval": 3, "eval_seqs": 4, "patience": 1, "max_steps": 12,
                               "pack": 1}})
    got = submit_grid(sp, tmp_path / "out", root, executor="slurm", chunk=1, timeout_min=10, device="cpu")
    assert got["complete"] and got["finished_runs"] == 2
    logs = list((tmp_path / "out" / "submitit").glob("*/*_log.out"))
    assert len(logs) == 2  # two array tasks, each a SLURM job
    ref = run_grid(sp, tmp_path / "ref", root, device="cpu")
    assert ref["complete"] and curves(tmp_path / "ref") == curves(tmp_path / "out")
