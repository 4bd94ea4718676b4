"""Several hosts on one machine, for the multi-host tests: each host is a network namespace
(a network stack of its own, its own hostname and /etc/hosts), joined to the others through a
bridge in a switch namespace by a veth pair, with an address from 192.0.2.0/24 (TEST-NET-1,
reserved for documentation) that exists only inside these namespaces, so no traffic can leave
them. mpiexec runs on host1 and reaches the others through multihost_launcher.sh in place of
ssh. MPI is held to TCP (UCX_TLS, FI_PROVIDER): UCX would otherwise reach the other
namespaces' processes through the one kernel's shared memory, and a cut link would cut nothing.

Making namespaces needs root; where they cannot be made, `hosts` skips with the reason."""
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
from helpers import MPIEXEC

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_launcher.sh")
TCP_ONLY = ["-genv", "UCX_TLS", "tcp,self", "-genv", "FI_PROVIDER", "tcp"]


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Hosts:
    """Hosts host1..host{count}, made on entry and removed on exit (a failed test included)."""

    def __init__(self, count):
        self.count = count
        self.prefix = f"n2t{os.getpid() % 100000}-"
        self.names = [f"host{i}" for i in range(1, count + 1)]
        self.switch = self.prefix + "switch"

    def namespace(self, host):
        return self.prefix + host

    def __enter__(self):
        try:
            ip("netns", "add", self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            hosts_file = "127.0.0.1 localhost\n" + "".join(f"192.0.2.{i} {h}\n" for i, h in enumerate(self.names, 1))
            for i, host in enumerate(self.names, 1):
                ns = self.namespace(host)
                ip("netns", "add", ns)
                ip("-n", ns, "link", "set", "lo", "up")
                ip("-n", self.switch, "link", "add", f"port{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
                ip("-n", self.switch, "link", "set", f"port{i}", "master", "br0", "up")
                ip("-n", ns, "addr", "add", f"192.0.2.{i}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                os.makedirs(f"/etc/netns/{ns}", exist_ok=True)  # `ip netns exec` mounts it on /etc
                with open(f"/etc/netns/{ns}/hosts", "w") as f:
                    f.write(hosts_file)
        except (OSError, subprocess.CalledProcessError) as e:
            self.__exit__()
            detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
            pytest.skip(f"cannot make network namespaces here ({detail})")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for ns in [self.namespace(h) for h in self.names] + [self.switch]:
            self.kill_everything_in(ns)  # whatever a failed test left running there
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # its veth ends go with it
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)

    def kill_everything_in(self, ns):
        for pid in self.pids(ns):
            with contextlib.suppress(ProcessLookupError):  # it may have ended since it was listed
                os.kill(pid, signal.SIGKILL)

    def pids(self, ns):
        listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        return [int(pid) for pid in listed.split()]

    def ranks_on(self, host):
        """The pids of the ranks (processes started as this Python) running on host."""
        ranks = []
        for pid in self.pids(self.namespace(host)):
            try:
                with open(f"/proc/{pid}/cmdline") as f:
                    if f.read().split("\0")[0] == sys.executable:
                        ranks.append(pid)
            except OSError:
                pass  # it ended meanwhile
        return ranks

    def command(self, args, hosts=None, per_host=1):
        """The command line that runs mpiexec on host1 over `hosts` (default all), per_host ranks each."""
        hosts = hosts or self.names
        mpiexec = [MPIEXEC, "-launcher", "ssh", "-launcher-exec", LAUNCHER, "-hosts", ",".join(hosts),
                   "-ppn", str(per_host), "-n", str(per_host * len(hosts)), *TCP_ONLY, *args]
        return self.on_host1(mpiexec)

    def on_host1(self, args):
        """`args` run on host1 as the launcher runs a command on any host (mpiexec starts
        host1's ranks itself, so they inherit its core)."""
        return ["ip", "netns", "exec", self.namespace("host1"), "unshare", "--uts", "--", "taskset", "-c", "0",
                "bash", "-c", "hostname host1 && exec " + shlex.join(args)]

    def environment(self):
        return {**os.environ, "NANO2_NETNS_PREFIX": self.prefix}

    def run(self, args, timeout=300, **kwargs):
        """mpiexec over the hosts, to completion: a CompletedProcess with its text output."""
        return subprocess.run(self.command(args, **kwargs), capture_output=True, text=True, timeout=timeout,
                              env=self.environment(), cwd=os.path.dirname(os.path.dirname(LAUNCHER)))

    def start(self, args, **kwargs):
        """mpiexec over the hosts in the background (stdout and stderr as one text pipe)."""
        return subprocess.Popen(self.command(args, **kwargs), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=self.environment(), cwd=os.path.dirname(os.path.dirname(LAUNCHER)))

    def cut(self, host):
        """Cut host's link to the switch: its packets go nowhere, as when a cable is pulled."""
        ip("-n", self.switch, "link", "set", f"port{self.names.index(host) + 1}", "down")


