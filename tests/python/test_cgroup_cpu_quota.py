"""threads=None under a container's CPU quota (outside probe, Python round forty-seven's not-fixed
item): a pod limited to 2 CPUs on a 64-core node keeps the node's affinity mask, so the closure's
default started 64 workers that the quota throttled. The default is now no more than the quota of
the process's cgroup or of any cgroup above it (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` over
`cpu.cfs_period_us`), read from fake cgroup trees here."""
from __future__ import annotations

import pytest

from dodo import _box3d


def _tree(tmp_path, membership: str, files: dict) -> tuple[str, str]:
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "self_cgroup").write_text(membership)
    return str(root), str(tmp_path / "self_cgroup")


@pytest.mark.parametrize("membership, files, expected", [
    # cgroup v2, the quota on the process's own cgroup: 1.5 CPUs -> 2 workers
    ("0::/kubepods/pod1\n", {"cgroup.controllers": "cpu", "kubepods/pod1/cpu.max": "150000 100000\n"}, 2),
    # v2, no quota here but one above it
    ("0::/a/b\n", {"cgroup.controllers": "cpu", "a/b/cpu.max": "max 100000\n", "a/cpu.max": "300000 100000\n"}, 3),
    # v2 inside a container: the mount's root is the container's own cgroup
    ("0::/\n", {"cgroup.controllers": "cpu", "cpu.max": "400000 100000\n"}, 4),
    # v2, no limit anywhere
    ("0::/a\n", {"cgroup.controllers": "cpu", "a/cpu.max": "max 100000\n"}, None),
    # v1, cpu and cpuacct mounted together
    ("4:cpu,cpuacct:/docker/c1\n0::/\n", {"cpu,cpuacct/docker/c1/cpu.cfs_quota_us": "250000\n",
                                         "cpu,cpuacct/docker/c1/cpu.cfs_period_us": "100000\n"}, 3),
    # v1 without a quota (-1)
    ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    # unreadable or odd files: no limit rather than an error
    ("0::/x\n", {"cgroup.controllers": "cpu", "x/cpu.max": "lots\n"}, None),
    ("garbage without colons\n", {}, None),
])
def test_the_cgroup_quota_is_read_in_whole_cpus(tmp_path, membership, files, expected):
    root, self_cgroup = _tree(tmp_path, membership, files)
    assert _box3d._cgroup_cpu_limit(root, self_cgroup) == expected


def test_no_cgroup_files_give_no_limit(tmp_path):
    assert _box3d._cgroup_cpu_limit(str(tmp_path / "absent"), str(tmp_path / "absent_self")) is None


def test_the_default_thread_count_keeps_to_the_quota(monkeypatch):
    """A quota smaller than the affinity mask lowers the default; a larger one leaves the mask's count."""
    monkeypatch.setattr(_box3d.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(_box3d, "_cgroup_cpu_limit", lambda: 2)
    assert _box3d._usable_cpus() == 2 and _box3d._threads(None) == 2
    monkeypatch.setattr(_box3d, "_cgroup_cpu_limit", lambda: 128)
    assert _box3d._usable_cpus() == 64
    monkeypatch.setattr(_box3d, "_cgroup_cpu_limit", lambda: None)
    assert _box3d._usable_cpus() == 64
