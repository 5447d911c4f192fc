"""systemd notify protocol against real AF_UNIX datagram listeners, and the daemon's use of it:
READY=1 only once subnet.env exists, watchdog pings while healthy, STOPPING=1 on SIGTERM."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid

import pytest

from fastflannel.agent import sdnotify
from fastflannel.agent.daemon import HEARTBEAT_STALE_S, Daemon
from fastflannel.agent.flags import parse_flags
from fastflannel.lab import wait_for
from fastflannel.lab.cluster import Cluster, seed_config


class Listener:
    """A datagram socket like systemd's notify socket; records (monotonic time, text, extra)."""

    def __init__(self, address: str, on_message=lambda text: None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list = []
        self.on_message = on_message
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            text = data.decode()
            self.messages.append((time.monotonic(), text, self.on_message(text)))

    def texts(self):
        return [m[1] for m in self.messages]

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def path_listener(tmp_path):
    listener = Listener(str(tmp_path / "notify.sock"))
    yield listener, str(tmp_path / "notify.sock")
    listener.close()


def test_notify_to_a_path_socket(path_listener):
    listener, path = path_listener
    n = sdnotify.Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.notify("READY=1") and n.notify("STOPPING=1")
    assert wait_for(lambda: listener.texts() == ["READY=1", "STOPPING=1"], 2)


def test_notify_to_an_abstract_socket():
    name = f"ff-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    listener = Listener("\0" + name)
    try:
        assert sdnotify.Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).notify("READY=1")
        assert wait_for(lambda: listener.texts() == ["READY=1"], 2)
    finally:
        listener.close()


def test_without_notify_socket_nothing_is_sent():
    n = sdnotify.Notifier.from_env({})
    assert n.notify("READY=1") is False
    assert n.watchdog_interval_s() is None


def test_unreachable_socket_is_logged_not_raised(tmp_path, caplog):
    n = sdnotify.Notifier(str(tmp_path / "missing.sock"))
    assert n.notify("READY=1") is False
    assert "Failed to notify systemd the message READY=1" in caplog.text


@pytest.mark.parametrize("env, interval", [
    ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"}, 15.0),
    ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),   # not ours
    ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"}, None),
    ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "30000000"}, None),                                              # no socket
])
def test_watchdog_interval_is_half_the_timeout_when_meant_for_us(env, interval):
    assert sdnotify.Notifier.from_env(env).watchdog_interval_s() == interval


def test_watchdog_pings_only_while_healthy(path_listener):
    listener, path = path_listener
    state = {"healthy": True}
    stop = threading.Event()
    dog = sdnotify.Watchdog(sdnotify.Notifier(path, watchdog_usec=100_000), lambda: state["healthy"], stop)
    assert dog.start()
    try:
        assert wait_for(lambda: len(listener.texts()) >= 5, 2)
        state["healthy"] = False
        time.sleep(0.15)                      # a ping already under way may still land
        before = len(listener.texts())
        time.sleep(0.4)                       # 8 intervals: none may come while unhealthy
        assert len(listener.texts()) == before
        state["healthy"] = True
        assert wait_for(lambda: len(listener.texts()) >= before + 3, 2)
    finally:
        stop.set()
        dog.join()
    assert set(listener.texts()) == {"WATCHDOG=1"}


def test_watchdog_survives_a_failing_health_check(path_listener):
    listener, path = path_listener
    calls = []

    def healthy():
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("boom")
        return True
    stop = threading.Event()
    dog = sdnotify.Watchdog(sdnotify.Notifier(path, watchdog_usec=100_000), healthy, stop)
    dog.start()
    try:
        assert wait_for(lambda: len(listener.texts()) >= 2, 2)
    finally:
        stop.set()
        dog.join()
    assert len(calls) > 3


def test_daemon_health_for_the_watchdog():
    d = Daemon(parse_flags([], {}))
    assert not d.healthy()                                # not ready yet
    d.ready = True
    assert d.healthy()
    d._heartbeat -= HEARTBEAT_STALE_S + 1                 # main loop stuck
    assert not d.healthy()
    d._heartbeat = time.monotonic()
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    d._threads.append(dead)                               # a worker died
    assert not d.healthy()
    d._threads.clear()
    d.stop.set()                                          # shutting down
    assert not d.healthy()


@pytest.mark.netns
@pytest.mark.etcd
def test_daemon_ready_after_subnet_env_then_watchdog_then_stopping(lab):
    """The daemon waits for its config (no READY=1, no subnet.env), then gets it: READY=1 comes
    with subnet.env already written, watchdog pings follow, SIGTERM brings STOPPING=1."""
    cluster = Cluster(lab, None, hosts=("h1",))
    subnet_file = cluster.subnet_file("h1")
    sock = os.path.join(lab.tmp, "notify.sock")
    listener = Listener(sock, on_message=lambda text: os.path.exists(subnet_file))
    try:
        p = cluster.start("h1", env={"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "400000"})
        time.sleep(2.0)                                   # retrying for the config every second
        assert p.poll() is None, cluster.log("h1")
        assert listener.messages == [] and not os.path.exists(subnet_file)
        cluster.put_config(seed_config("host-gw"))
        assert wait_for(lambda: "READY=1" in listener.texts(), 20), cluster.log("h1")
        first = listener.messages[0]
        assert first[1] == "READY=1" and first[2] is True, "READY=1 before subnet.env existed"
        assert wait_for(lambda: listener.texts().count("WATCHDOG=1") >= 4, 5), listener.texts()
        ready_t = first[0]
        pings = [t for t, text, _ in listener.messages if text == "WATCHDOG=1"]
        assert pings[0] > ready_t                         # the watchdog starts with READY=1
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert all(0.1 < g < 0.4 for g in gaps), gaps     # every WATCHDOG_USEC/2 = 0.2 s
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(10)
        assert p.returncode == 0, cluster.log("h1")
        assert wait_for(lambda: listener.texts()[-1:] == ["STOPPING=1"], 2), listener.texts()
    finally:
        listener.close()
