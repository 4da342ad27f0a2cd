// The memory a process may use: the machine's physical memory, or less where a control group
// confines it (a batch system's job, a container). Used to refuse workspaces that cannot fit
// before they are made (closure.cpp), instead of meeting the kernel's out-of-memory killer.
#pragma once

#include <string>

namespace dodo::runtime {

// The smallest memory limit of the control groups named in `proc_self_cgroup` (the text of
// /proc/self/cgroup), read under `cgroup_root` (normally /sys/fs/cgroup): cgroup v2's memory.max
// ("0::/path") and cgroup v1's memory controller's memory.limit_in_bytes ("N:...memory...:/path"),
// for the group and each of its ancestors up to the root (a parent's limit binds its children; a
// group whose path is not visible, as inside a container's cgroup namespace, is read at the root
// alone). Infinity when no limit is set or none can be read ("max", v1's "no limit" of about
// 2^63, a missing file).
double cgroup_memory_limit(const std::string& proc_self_cgroup, const std::string& cgroup_root);

// min(physical memory, this process's cgroup_memory_limit(...) under /sys/fs/cgroup), in bytes;
// infinity when neither is known.
double usable_memory_bytes();

// This process's mapped size (the first field of /proc/self/statm, VmSize: what RLIMIT_AS
// bounds), in bytes; NaN when it cannot be read.
double mapped_bytes();

// Why an allocation or a library's mapping failed for want of memory, for messages: "the
// address-space limit RLIMIT_AS (ulimit -v) is N kB: raise it, e.g. ulimit -v unlimited" where
// this process has one (a soft RLIMIT_AS below infinity) that mapped_bytes() + `request_bytes`
// (the failed request, 0 when unknown) comes near: at least half of it, or within 256 MiB of it
// (or the size is unknown); else the machine's or a control group's memory. Allocates (the caller
// catches what it throws).
std::string memory_shortage_cause(double request_bytes = 0);

}  // namespace dodo::runtime
