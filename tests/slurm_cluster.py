"""A real one-node SLURM cluster for tests: munged, slurmctld and slurmd started on 127.0.0.1 from a
temporary folder (their own key, sockets, ports, state and spool folders; no cgroups), clients pointed
at it through ``SLURM_CONF``. Stopped by the process ids it started, never by name.

Needs Debian's ``slurm-wlm`` and ``munge`` (``make slurm`` installs them as root) and root for slurmd.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


def missing() -> str | None:
    """Why no cluster can be started here (None when it can)."""
    absent = [d for d in (*DAEMONS, "sbatch", "squeue", "scontrol") if not shutil.which(d) and
              not Path(f"/usr/sbin/{d}").exists()]
    if absent:
        return f"SLURM not installed ({', '.join(absent)} missing): `make slurm` installs slurm-wlm and munge as root"
    if os.geteuid() != 0:
        return "slurmd needs root to start jobs as the submitting user"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Cluster:
    def __init__(self, root: Path, cpus: int | None = None) -> None:
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.procs: dict[str, subprocess.Popen] = {}
        self.env: dict[str, str] = {}

    def _write_conf(self) -> Path:
        r = self.root
        for d in ("state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        node = socket.gethostname().split(".")[0]
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20) // 2
        conf = r / "slurm.conf"
        conf.write_text(f"""ClusterName=fromscratch-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r / 'munge.sock'}
CredType=cred/munge
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=5
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=300
NodeName={node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        return conf

    def start(self, timeout: float = 60) -> Cluster:
        conf = self._write_conf()
        r = self.root
        self.env = {"SLURM_CONF": str(conf)}
        env = {**os.environ, **self.env}
        log = open(r / "log" / "daemons.out", "ab")
        self.procs["munged"] = subprocess.Popen(
            [_exe("munged"), "-F", "--force", f"--key-file={r / 'munge.key'}", f"--socket={r / 'munge.sock'}",
             f"--pid-file={r / 'munged.pid'}", f"--log-file={r / 'log' / 'munged.log'}",
             f"--seed-file={r / 'munged.seed'}"], stdout=log, stderr=log, env=env)
        self._wait(lambda: (r / "munge.sock").exists(), timeout, "munged")
        self.procs["slurmctld"] = subprocess.Popen([_exe("slurmctld"), "-D", "-i", "-f", str(conf)], stdout=log,
                                                   stderr=log, env=env)
        self.procs["slurmd"] = subprocess.Popen([_exe("slurmd"), "-D", "-f", str(conf)], stdout=log, stderr=log,
                                                env=env)
        self._wait(self._idle, timeout, "an idle node")
        return self

    def _idle(self) -> bool:
        p = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env={**os.environ, **self.env})
        return p.returncode == 0 and p.stdout.strip().startswith("idle")

    def _wait(self, ok, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}: {self.logs()}")
            if ok():
                return
            time.sleep(0.2)
        raise RuntimeError(f"no {what} after {timeout} s: {self.logs()}")

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            out.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, env={**os.environ, **self.env})

    def stop(self) -> None:
        """Cancel every job, wait for the queue to empty, then stop the daemons by their PIDs."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user", str(os.getuid()))
            end = time.monotonic() + 30
            while time.monotonic() < end and self.run("squeue", "-h").stdout.strip():
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
