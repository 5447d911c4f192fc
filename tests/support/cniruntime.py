"""A minimal container runtime's CNI side, as libcni runs a network configuration list: for ADD
each plugin in order gets the list's name and cniVersion and the previous plugin's result as
prevResult; CHECK runs in order and DEL in reverse, both with the cached ADD result. Plugins run
as processes inside the host's namespace (`ip netns exec`), the container's namespace path in
CNI_NETNS, exactly as kubelet/containerd would run them on a node.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

PLUGIN_DIR = "/usr/lib/cni"                  # Debian's containernetworking-plugins
NEEDED_PLUGINS = ("bridge", "host-local", "loopback", "portmap")


class PluginError(Exception):
    def __init__(self, plugin: str, command: str, rc: int, stdout: str, stderr: str):
        super().__init__(f"{plugin} {command} rc={rc}: {stdout.strip()} {stderr.strip()[-600:]}")
        self.result = _json_or_none(stdout)
        self.stderr = stderr


def _json_or_none(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def make_bin_dir(path: str, flannel_exe: str) -> str:
    """A CNI bin dir like /opt/cni/bin: our plugin under the name `flannel`, Debian's beside it."""
    os.makedirs(path, exist_ok=True)
    os.symlink(flannel_exe, os.path.join(path, "flannel"))
    for name in NEEDED_PLUGINS:
        os.symlink(os.path.join(PLUGIN_DIR, name), os.path.join(path, name))
    return path


@dataclass
class Runtime:
    host_ns: str
    cni_path: str

    def exec_plugin(self, conf: dict, command: str, container_id: str, netns: str, ifname: str,
                    check: bool = True) -> dict | None:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
               "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
               "CNI_PATH": self.cni_path}
        exe = os.path.join(self.cni_path, conf["type"])
        p = subprocess.run(["ip", "netns", "exec", self.host_ns, exe], input=json.dumps(conf),
                           capture_output=True, text=True, env=env, timeout=60)
        if p.returncode != 0:
            if check:
                raise PluginError(conf["type"], command, p.returncode, p.stdout, p.stderr)
            return {"rc": p.returncode, "error": _json_or_none(p.stdout), "stderr": p.stderr}
        return _json_or_none(p.stdout)

    def _plugin_conf(self, conflist: dict, plugin: dict, prev: dict | None) -> dict:
        conf = dict(plugin, name=conflist["name"], cniVersion=conflist["cniVersion"])
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def add(self, conflist: dict, container_id: str, netns: str, ifname: str = "eth0") -> dict:
        result = None
        for plugin in conflist["plugins"]:
            result = self.exec_plugin(self._plugin_conf(conflist, plugin, result), "ADD", container_id,
                                      netns, ifname)
        assert result is not None
        return result

    def check(self, conflist: dict, container_id: str, netns: str, cached: dict, ifname: str = "eth0"):
        for plugin in conflist["plugins"]:
            self.exec_plugin(self._plugin_conf(conflist, plugin, cached), "CHECK", container_id, netns, ifname)

    def delete(self, conflist: dict, container_id: str, netns: str, cached: dict | None,
               ifname: str = "eth0") -> None:
        for plugin in reversed(conflist["plugins"]):
            self.exec_plugin(self._plugin_conf(conflist, plugin, cached), "DEL", container_id, netns, ifname)

    def loopback(self, container_id: str, netns: str, command: str = "ADD") -> dict | None:
        """The runtime's own loopback set-up (containerd and kubelet run it for every pod)."""
        conf = {"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}
        return self.exec_plugin(conf, command, container_id, netns, "lo")


def load_conflist(path: str, subnet_file: str, data_dir: str, ipam_dir: str) -> dict:
    """The shipped conflist, pointed at a test's own subnet.env and state directories."""
    with open(path) as f:
        conflist = json.load(f)
    flannel: list[dict] = [p for p in conflist["plugins"] if p["type"] == "flannel"]
    flannel[0].update(subnetFile=subnet_file, dataDir=data_dir, ipam={"dataDir": ipam_dir})
    return conflist
