// The default thread count: the physical cores this process may run on, by the rule of the Python
// runtime's mrdl_runtime.threads (one rule for both runtimes).
#pragma once

#include "mrdl/export.hpp"

#include <optional>
#include <set>
#include <string>

namespace mrdl {

/// The most CPU threads one model run may be given (SegmenterOptions::intra_op_threads): a fixed
/// number, far above any CPU's cores and far below the count at which a runtime's thread pool
/// exhausts memory or hangs; the Python runtime's mrdl_runtime.options.MAX_THREADS.
constexpr int kMaxThreads = 1024;

/// Where Linux describes the CPUs and this process's cgroup (parameters of the functions below, so
/// that a test can hand them a fake tree).
constexpr const char* kSysfsCpu = "/sys/devices/system/cpu";
constexpr const char* kCgroupRoot = "/sys/fs/cgroup";

/// A Linux CPU list, "0-3,8,10-11" -> {0, 1, 2, 3, 8, 10, 11} (surrounding white space ignored);
/// nullopt when the text is not one (the CPU then counts as its own core).
MRDL_API std::optional<std::set<int>> parse_cpu_list(const std::string& text);

/// The logical CPUs this process may run on: its affinity mask (taskset, a container's cpuset),
/// or {0 .. hardware_concurrency - 1} where the mask cannot be read.
MRDL_API std::set<int> allowed_cpus();

/// How many physical cores the logical CPUs `cpus` span: SMT siblings (sysfs
/// cpuN/topology/core_cpus_list, or thread_siblings_list on older kernels) count once; a CPU
/// without readable topology counts as its own core. At least 1.
MRDL_API int physical_cores(const std::set<int>& cpus, const std::string& sysfs_cpu = kSysfsCpu);

/// The CPU quota of this process's cgroup in whole CPUs, rounded up (cgroup v2 cpu.max, else v1
/// cpu/cpu.cfs_quota_us / cpu.cfs_period_us); nullopt without a quota.
MRDL_API std::optional<int> cgroup_cpu_limit(const std::string& cgroup_root = kCgroupRoot);

/// Physical cores available to this process: physical_cores(allowed_cpus()), at most the cgroup
/// quota, at least 1. What a thread count of 0 means to every backend (SegmenterOptions::intra_op_threads).
MRDL_API int default_threads();

/// Throw InputError naming the accepted range unless 0 <= threads <= kMaxThreads.
MRDL_API void check_threads(int threads);

/// `threads` itself when positive, default_threads() for 0; outside [0, kMaxThreads] an InputError
/// (check_threads).
MRDL_API int resolve_threads(int threads);

}  // namespace mrdl
