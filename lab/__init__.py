"""The lab (fastflannel.lab): namespace hosts, a real etcd, daemons and traffic on one machine.

Not part of the daemon: `fastflannel demo`, the tests and the benchmarks build their clusters with
it. `netns` (hosts, containers), `etcd` (the one etcd launcher), `cluster` (a daemon per host),
`traffic` (checked TCP transfers), `proc` (processes, the one `wait_for`), `demo`, and
`programs/` (helper programs run as `sys.executable <file> <args>`).
"""
from .netns import Container, Host, Lab, cleanup_stale, have_netns_privileges, read_subnet_env
from .proc import LabError, kill_process, program, run, stop_process, wait_for
from .traffic import tcp_transfer

__all__ = ["Container", "Host", "Lab", "LabError", "cleanup_stale", "have_netns_privileges", "kill_process",
           "program", "read_subnet_env", "run", "stop_process", "tcp_transfer", "wait_for"]
