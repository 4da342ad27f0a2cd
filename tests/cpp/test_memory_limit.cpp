// cgroup_memory_limit (cpp/src/runtime/memory_limit.hpp) on made-up /proc/self/cgroup texts and
// cgroup trees in a temporary directory: the workspace check of closure.cpp compared threads x
// chunk_size with the machine's physical memory alone, so a job confined by a control group (a
// batch system's, a container's) could pass it and meet the kernel's out-of-memory killer
// (outside probe, round twelve of the C side). ctest `memory_limit`.
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "runtime/memory_limit.hpp"

namespace {

int failures = 0;

void expect(bool ok, const char* what, double got) {
  std::printf("%s %s (got %.17g)\n", ok ? "ok  " : "FAIL", what, got);
  if (!ok) ++failures;
}

void make_directories(const std::string& path) {
  for (std::size_t slash = path.find('/', 1); ; slash = path.find('/', slash + 1)) {
    ::mkdir(path.substr(0, slash).c_str(), 0700);
    if (slash == std::string::npos) return;
  }
}

void write(const std::string& directory, const std::string& file, const std::string& text) {
  make_directories(directory);
  std::ofstream(directory + "/" + file) << text << "\n";
}

}  // namespace

int main() {
  using dodo::runtime::cgroup_memory_limit;
  char pattern[] = "/tmp/dodo_memory_limit_XXXXXX";
  if (!::mkdtemp(pattern)) return 2;
  const std::string root = pattern;
  const double GiB = 1024.0 * 1024.0 * 1024.0;

  // cgroup v2: the job's limit binds its step, which has none of its own ("max").
  write(root + "/v2/slurm/job_7", "memory.max", "1073741824");
  write(root + "/v2/slurm/job_7/step_0", "memory.max", "max");
  expect(cgroup_memory_limit("0::/slurm/job_7/step_0\n", root + "/v2") == 1 * GiB, "v2: an ancestor's limit binds",
         cgroup_memory_limit("0::/slurm/job_7/step_0\n", root + "/v2"));
  // The step's own, smaller limit wins.
  write(root + "/v2b/job", "memory.max", "4294967296");
  write(root + "/v2b/job/step", "memory.max", "536870912");
  expect(cgroup_memory_limit("0::/job/step", root + "/v2b") == 0.5 * GiB, "v2: the smallest along the path",
         cgroup_memory_limit("0::/job/step", root + "/v2b"));
  // Inside a container's cgroup namespace: "0::/", the limit at the mount's root.
  write(root + "/v2c", "memory.max", "2147483648");
  expect(cgroup_memory_limit("0::/\n", root + "/v2c") == 2 * GiB, "v2: the namespace's root",
         cgroup_memory_limit("0::/\n", root + "/v2c"));

  // cgroup v1: the memory controller (alone or with others); "no limit" is 2^63 less a page.
  const std::string v1_text = "9:name=systemd:/\n5:cpuacct,memory:/process_api/abc\n3:cpuset:/\n0::/\n";
  write(root + "/v1/memory/process_api/abc", "memory.limit_in_bytes", "9223372036854771712");
  write(root + "/v1/memory/process_api", "memory.limit_in_bytes", "3221225472");
  write(root + "/v1/memory", "memory.limit_in_bytes", "9223372036854771712");
  expect(cgroup_memory_limit(v1_text, root + "/v1") == 3 * GiB, "v1: the parent's limit, 'no limit' ignored",
         cgroup_memory_limit(v1_text, root + "/v1"));

  // No limit anywhere, files missing, garbage, or a path that climbs out: infinity.
  write(root + "/none/memory/a", "memory.limit_in_bytes", "9223372036854771712");
  expect(std::isinf(cgroup_memory_limit("4:memory:/a\n", root + "/none")), "v1: unlimited",
         cgroup_memory_limit("4:memory:/a\n", root + "/none"));
  expect(std::isinf(cgroup_memory_limit("0::/not/there\n", root + "/missing")), "missing files",
         cgroup_memory_limit("0::/not/there\n", root + "/missing"));
  write(root + "/garbage/g", "memory.max", "lots");
  expect(std::isinf(cgroup_memory_limit("0::/g\n", root + "/garbage")), "a file without a number",
         cgroup_memory_limit("0::/g\n", root + "/garbage"));
  write(root + "/escape", "memory.max", "1024");
  expect(std::isinf(cgroup_memory_limit("0::/../escape\n", root + "/escape/inner")), "a path with ..",
         cgroup_memory_limit("0::/../escape\n", root + "/escape/inner"));
  expect(std::isinf(cgroup_memory_limit("", root)), "an empty /proc/self/cgroup", cgroup_memory_limit("", root));

  // This process: positive, and never above the machine's physical memory.
  const double usable = dodo::runtime::usable_memory_bytes();
  const double physical = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  expect(usable > 0 && usable <= physical, "usable_memory_bytes within the machine's memory", usable);

  std::string remove = "rm -rf '" + root + "'";
  if (std::system(remove.c_str()) != 0) std::printf("note: could not remove %s\n", root.c_str());
  std::printf("memory_limit: %d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
