"""A throwaway one-node SLURM cluster on this machine, for tests (Debian's Slurm 22.05, root only).

Everything lives in one private folder (state, spool, logs, its own munge key and socket), except
/etc/slurm/slurm.conf and gres.conf: Snakemake's SLURM jobstep strips SLURM_CONF from the job
environment, so srun inside a job only finds the configuration at the default path. Existing files
there are backed up and restored on stop(). Daemons are started in the foreground as our own children
and stopped by PID; nothing is ever killed by name.

No accounting (no slurmdbd): Snakemake's SLURM executor must poll with `squeue`
(--slurm-status-command squeue), which sees finished jobs for MinJobAge seconds: 1200 here (Slurm's default is
300), so that `scontrol show job` still knows a job that finished early when a test reads it at the module's end.
Two fake GPUs (gres gpu:2 backed by /dev/null and /dev/zero) let GPU rules' `--gpus=1` and a 2-process training
job's `--gpus=2` be scheduled. The node declares 4x the machine's cores and memory (see SCALE), so that the tests'
runs do not queue behind each other on a 2-core machine.

Manual use (for debugging): python tests/slurm/cluster.py start   # prints the folder; then sinfo, sbatch ...
                            python tests/slurm/cluster.py stop FOLDER
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ETC = Path("/etc/slurm")
CONF_FILES = ("slurm.conf", "gres.conf", "cgroup.conf")
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
DAEMONS = ("slurmctld", "slurmd", "slurmstepd")
PARTITION = "main"


def why_not_available() -> str | None:
    """None if a local cluster can be started here, else the reason (for pytest.skip)."""
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (writes /etc/slurm/slurm.conf and starts slurmctld/slurmd)"
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"SLURM/munge not installed (missing {', '.join(missing)}; apt-get install slurmctld slurmd slurm-client munge)"
    running = running_daemons()
    if running:
        return f"SLURM daemons already running here ({running}); not touching a live cluster"
    if (os.cpu_count() or 1) < 2:
        return "needs at least 2 CPUs (knn_weights asks for 2 threads)"
    return None


def running_daemons() -> dict[int, str]:
    """PIDs of any slurmctld/slurmd/slurmstepd on this machine (read from /proc; never signalled)."""
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                name = (d / "comm").read_text().strip()
            except OSError:
                continue
            if name in DAEMONS:
                found[int(d.name)] = name
    return found


def node_line(host: str) -> str:
    """The hardware as slurmd sees it, with SCALE times its cores and memory, plus address and fake GPUs."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("NodeName="))
    fields = dict(f.split("=", 1) for f in line.split() if not f.startswith(("NodeName=", "UpTime=")))
    for key in ("CPUs", "CoresPerSocket", "RealMemory"):
        fields[key] = str(int(fields[key]) * SCALE)
    return (
        f"NodeName={host} NodeAddr=127.0.0.1 {' '.join(f'{k}={v}' for k, v in fields.items())} Gres=gpu:2 State=UNKNOWN"
    )


MARKER = "# Written by tests/slurm/cluster.py"
# The node declares SCALE times the machine's cores and memory (SlurmdParameters=config_overrides keeps slurmd from
# draining it for the mismatch): the tests' jobs use a fraction of what they request (a 2-process GRPO job asks for
# 2 CPUs and 16 GB), and on the real 2 cores the module's runs would otherwise queue behind each other while the
# executor's status polls back off (+10 s per poll in which no job finished). Nothing confines a job to its CPUs or
# memory here (task/none, no cgroups): what the tests check is what SLURM was asked for and allocated.
SCALE = 4

SLURM_CONF = """\
# Written by tests/slurm/cluster.py for a throwaway one-node test cluster ({base}); restored on stop.
ClusterName=dgrpotest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge/munge.socket
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=1000
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=1200
ReturnToService=2
SlurmdTimeout=300
KillWait=5
{node}
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""

GRES_CONF = """\
# Written by tests/slurm/cluster.py: two fake GPUs so that --gpus=1 and --gpus=2 jobs can be scheduled.
AutoDetect=off
Name=gpu File=/dev/null
Name=gpu File=/dev/zero
"""


class LocalSlurm:
    """start() -> sbatch/squeue work against a one-node cluster; stop() undoes everything it did."""

    def __init__(self, base: Path | None = None):
        # munged insists that every folder above its socket is world-executable: no pytest tmp_path (0700).
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="dgrpo-slurm-"))
        self.host = socket.gethostname().split(".")[0]  # must equal `hostname -s`, or slurmd won't find its node
        self.procs: dict[str, subprocess.Popen] = {}
        self.backup = self.base / "etc-backup"

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 90) -> "LocalSlurm":
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        os.chmod(self.base, 0o711)
        for d in ("munge", "state", "spool", "log"):
            (self.base / d).mkdir(exist_ok=True)
        os.chmod(self.base / "munge", 0o711)
        self._install_conf()
        self._write_state()

        key = self.base / "munge/munge.key"
        subprocess.run(["mungekey", "-c", "-b", "1024", "-k", str(key)], check=True, capture_output=True)
        m = self.base / "munge"
        self._spawn(
            "munged",
            [
                "munged",
                "-F",
                f"--key-file={key}",
                f"--socket={m}/munge.socket",
                f"--pid-file={m}/munged.pid",
                f"--log-file={self.base}/log/munged.log",
                f"--seed-file={m}/munged.seed",
            ],
        )
        self._wait(lambda: (m / "munge.socket").exists(), 20, "munged socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._wait(lambda: self._ok(["scontrol", "ping"], "UP"), 30, "slurmctld to answer scontrol ping")
        self._spawn("slurmd", ["slurmd", "-D"])
        self._wait(self.node_idle, timeout, "the node to be idle in sinfo")
        self._write_state()

    def stop(self) -> None:
        """Cancel our jobs, stop our daemons by PID, restore /etc/slurm. Safe to call twice."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", f"--partition={PARTITION}"], capture_output=True, timeout=30)
            deadline = time.time() + 30
            while time.time() < deadline and self._ok(["squeue", "-h", "-t", "PD,R,CG", "-o", "%i"], ""):
                time.sleep(1)
        for name in ("slurmd", "slurmctld", "munged"):  # reverse start order
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()  # our own child, by PID
                p.wait(timeout=10)
        self._restore_conf()
        self._write_state()

    # -- helpers -------------------------------------------------------------------------------------
    def node_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-n", self.host, "-o", "%t"], capture_output=True, text=True).stdout
        return out.strip() == "idle"

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for f in sorted((self.base / "log").glob("*.log")):
            parts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def show_job(self, jobid: str) -> str:
        return subprocess.run(["scontrol", "show", "job", jobid], capture_output=True, text=True).stdout

    def _install_conf(self) -> None:
        self.backup.mkdir(exist_ok=True)
        ETC.mkdir(parents=True, exist_ok=True)
        for name in CONF_FILES:
            src = ETC / name
            ours = src.exists() and src.read_text(errors="replace").startswith(MARKER)  # left by a killed run
            existed = src.exists() and not ours
            if existed and not (self.backup / name).exists():
                shutil.copy2(src, self.backup / name)
            (self.backup / f"{name}.existed").write_text("1" if existed else "0")
        (ETC / "cgroup.conf").unlink(missing_ok=True)  # no cgroup plugins in use
        text = SLURM_CONF.format(base=self.base, host=self.host, node=node_line(self.host), partition=PARTITION)
        (ETC / "slurm.conf").write_text(text)
        (ETC / "gres.conf").write_text(GRES_CONF)

    def _restore_conf(self) -> None:
        if not self.backup.exists():
            return
        for name in CONF_FILES:
            marker = self.backup / f"{name}.existed"
            if not marker.exists():
                continue
            if marker.read_text() == "1":
                shutil.copy2(self.backup / name, ETC / name)
            else:
                (ETC / name).unlink(missing_ok=True)
            marker.unlink()

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.base / "log" / f"{name}.stdout", "ab")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self._write_state()

    def _write_state(self) -> None:
        state = {n: p.pid for n, p in self.procs.items() if p.poll() is None}
        (self.base / "pids.json").write_text(json.dumps(state))

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout}s waiting for {what}:\n{self.logs()}")

    @staticmethod
    def _ok(cmd: list[str], needle: str) -> bool:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return out.returncode == 0 and (needle in out.stdout if needle else bool(out.stdout.strip()))


def _stop_from_state(base: Path) -> None:
    """CLI stop: daemons started by a `start` in another process, by the PIDs it recorded."""
    pids = json.loads((base / "pids.json").read_text())
    for name in ("slurmd", "slurmctld", "munged"):
        pid = pids.get(name)
        if pid and Path(f"/proc/{pid}/comm").exists() and Path(f"/proc/{pid}/comm").read_text().strip() == name:
            os.kill(pid, signal.SIGTERM)
    time.sleep(3)
    LocalSlurm(base)._restore_conf()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "start":
        reason = why_not_available()
        if reason:
            sys.exit(f"cannot start: {reason}")
        c = LocalSlurm().start()
        c.procs.clear()  # leave them running; `stop FOLDER` ends them by recorded PID
        print(c.base)
    elif len(sys.argv) == 3 and sys.argv[1] == "stop":
        _stop_from_state(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
