#include "memory_limit.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <vector>

namespace dodo::runtime {
namespace {

// The text of a small /proc or /sys file (at most 64 KiB), or false where it cannot be read. Opened
// with O_CLOEXEC: std::ifstream opens without it, so a host thread's fork and exec at that moment
// handed the descriptor to the new program (outside probe, C round forty-seven, by reading).
bool read_small_file(const char* path, std::string& text) {
  text.clear();
  int fd;
  do fd = ::open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // a FIFO in its place does not block
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return false;
  char buffer[4096];
  bool ok = true;
  while (text.size() < 65536) {
    const ssize_t got = ::read(fd, buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) ok = false;
    if (got <= 0) break;
    text.append(buffer, static_cast<std::size_t>(got));
  }
  ::close(fd);
  return ok;
}

// A limit file's number of bytes; infinity for "max", an unreadable file or one that holds no
// number, and for values at or above 2^62 (cgroup v1 writes "no limit" as 2^63 less a page).
double read_limit(const std::string& path) {
  std::string text;
  if (!read_small_file(path.c_str(), text)) return INFINITY;
  text = text.substr(0, text.find('\n'));  // the first line
  const std::size_t start = text.find_first_not_of(" \t");
  if (start == std::string::npos || text.compare(start, 3, "max") == 0) return INFINITY;
  errno = 0;
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text.c_str() + start, &end, 10);
  if (errno != 0 || end == text.c_str() + start) return INFINITY;
  const double bytes = static_cast<double>(value);
  return bytes >= std::ldexp(1.0, 62) ? INFINITY : bytes;
}

// `file` in `directory` + path and in each ancestor of path, up to `directory` itself.
double smallest_along(const std::string& directory, std::string path, const std::string& file) {
  double smallest = INFINITY;
  while (true) {
    while (!path.empty() && path.back() == '/') path.pop_back();
    smallest = std::min(smallest, read_limit(directory + path + "/" + file));
    if (path.empty()) return smallest;
    const std::size_t slash = path.rfind('/');
    path = slash == std::string::npos ? std::string() : path.substr(0, slash);
  }
}

bool names_memory_controller(const std::string& controllers) {
  std::stringstream list(controllers);
  std::string name;
  while (std::getline(list, name, ','))
    if (name == "memory") return true;
  return false;
}

}  // namespace

double cgroup_memory_limit(const std::string& proc_self_cgroup, const std::string& cgroup_root) {
  double smallest = INFINITY;
  std::stringstream lines(proc_self_cgroup);
  std::string line;
  while (std::getline(lines, line)) {
    // hierarchy-ID:controller-list:cgroup-path (man 7 cgroups); the path may hold ':'.
    const std::size_t first = line.find(':');
    if (first == std::string::npos) continue;
    const std::size_t second = line.find(':', first + 1);
    if (second == std::string::npos) continue;
    const std::string id = line.substr(0, first);
    const std::string controllers = line.substr(first + 1, second - first - 1);
    const std::string path = line.substr(second + 1);
    if (path.empty() || path[0] != '/' || path.find("/..") != std::string::npos) continue;
    if (id == "0" && controllers.empty())  // cgroup v2 (unified hierarchy)
      smallest = std::min(smallest, smallest_along(cgroup_root, path, "memory.max"));
    else if (names_memory_controller(controllers))  // cgroup v1's memory controller
      smallest = std::min(smallest, smallest_along(cgroup_root + "/memory", path, "memory.limit_in_bytes"));
  }
  return smallest;
}

double usable_memory_bytes() {
  double memory = INFINITY;
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page_size > 0) memory = static_cast<double>(pages) * static_cast<double>(page_size);
  std::string text;
  if (read_small_file("/proc/self/cgroup", text)) memory = std::min(memory, cgroup_memory_limit(text, "/sys/fs/cgroup"));
  return memory;
}

double mapped_bytes() {
  std::string text;
  const long page_size = sysconf(_SC_PAGE_SIZE);
  if (!read_small_file("/proc/self/statm", text) || page_size <= 0) return NAN;
  errno = 0;
  char* end = nullptr;
  const unsigned long long pages = std::strtoull(text.c_str(), &end, 10);  // the first field: the size in pages
  if (errno != 0 || end == text.c_str()) return NAN;
  return static_cast<double>(pages) * static_cast<double>(page_size);
}

std::string memory_shortage_cause(double request_bytes) {
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    // The limit was named whenever one was set, even one far above the process's size, where it cannot
    // have refused the memory and the machine or a control group did (outside probe, C round
    // forty-four). A request of unknown size (0) may be large: the limit is named while the process
    // maps at least half of it, or comes within 256 MiB of it, and when the size cannot be read.
    const double cap = static_cast<double>(limit.rlim_cur), mapped = mapped_bytes();
    const double margin = std::max(cap / 2, 256.0 * 1024 * 1024);
    if (!(mapped + std::max(request_bytes, 0.0) + margin < cap))
      return "the address-space limit RLIMIT_AS (ulimit -v) is " + std::to_string(limit.rlim_cur / 1024) +
             " kB: raise it, e.g. ulimit -v unlimited";
    return "the machine's memory, or its control group's limit, is used up (the address-space limit RLIMIT_AS, " +
           std::to_string(limit.rlim_cur / 1024) + " kB, is far above the process's " +
           std::to_string(static_cast<unsigned long long>(mapped / 1024)) + " kB)";
  }
  return "the machine's memory, or its control group's limit, is used up";
}

}  // namespace dodo::runtime
