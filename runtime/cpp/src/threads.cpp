// The default thread count (mrdl/threads.hpp): affinity mask, one thread per physical core, under
// the cgroup CPU quota, as mrdl_runtime.threads computes it.
#include "mrdl/threads.hpp"

#include <sched.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

#include "mrdl/errors.hpp"

namespace mrdl {
namespace {

std::optional<std::string> read_text(const std::string& path) {
    std::ifstream stream(path);
    if (!stream) return std::nullopt;
    std::ostringstream text;
    text << stream.rdbuf();
    return text.str();
}

std::string trimmed(const std::string& text) {
    const size_t first = text.find_first_not_of(" \t\r\n");
    if (first == std::string::npos) return "";
    return text.substr(first, text.find_last_not_of(" \t\r\n") - first + 1);
}

/// A whole non-negative decimal integer (no sign, no trailing text), else nullopt.
std::optional<long long> parse_count(const std::string& text) {
    if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos || text.size() > 18)
        return std::nullopt;
    return std::stoll(text);
}

/// A decimal integer that may be negative (cgroup v1 writes -1 for "no quota").
std::optional<long long> parse_signed(const std::string& raw) {
    const std::string text = trimmed(raw);
    const bool negative = !text.empty() && text[0] == '-';
    const std::optional<long long> value = parse_count(negative ? text.substr(1) : text);
    if (!value) return std::nullopt;
    return negative ? -*value : *value;
}

int ceil_div(long long quota, long long period) { return static_cast<int>(std::max(1LL, (quota + period - 1) / period)); }

}  // namespace

std::optional<std::set<int>> parse_cpu_list(const std::string& text) {
    constexpr long long kMaxCpu = 1 << 20;  // far above any machine's CPU count: a bound on a hostile range
    std::set<int> cpus;
    std::istringstream parts(trimmed(text));
    std::string part;
    while (std::getline(parts, part, ',')) {
        if (part.empty()) continue;
        const size_t dash = part.find('-');
        const std::optional<long long> low = parse_count(part.substr(0, dash));
        const std::optional<long long> high = dash == std::string::npos ? low : parse_count(part.substr(dash + 1));
        if (!low || !high || *high < *low || *high > kMaxCpu) return std::nullopt;
        for (long long cpu = *low; cpu <= *high; ++cpu) cpus.insert(static_cast<int>(cpu));
    }
    return cpus;
}

std::set<int> allowed_cpus() {
    std::set<int> cpus;
    cpu_set_t mask;
    CPU_ZERO(&mask);
    if (sched_getaffinity(0, sizeof(mask), &mask) == 0) {
        for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
            if (CPU_ISSET(cpu, &mask)) cpus.insert(cpu);
    }
    if (cpus.empty()) {
        const unsigned count = std::max(1u, std::thread::hardware_concurrency());
        for (unsigned cpu = 0; cpu < count; ++cpu) cpus.insert(static_cast<int>(cpu));
    }
    return cpus;
}

int physical_cores(const std::set<int>& cpus, const std::string& sysfs_cpu) {
    std::set<std::set<int>> cores;
    for (int cpu : cpus) {
        std::optional<std::set<int>> siblings;
        for (const char* name : {"core_cpus_list", "thread_siblings_list"}) {
            const std::optional<std::string> text =
                read_text(sysfs_cpu + "/cpu" + std::to_string(cpu) + "/topology/" + name);
            if (text) siblings = parse_cpu_list(*text);
            if (siblings) break;
        }
        cores.insert(siblings && !siblings->empty() ? *siblings : std::set<int>{cpu});
    }
    return std::max<int>(1, static_cast<int>(cores.size()));
}

std::optional<int> cgroup_cpu_limit(const std::string& cgroup_root) {
    if (const std::optional<std::string> text = read_text(cgroup_root + "/cpu.max")) {  // v2: "max 100000", "250000 100000"
        std::istringstream fields(*text);
        std::string quota, period;
        fields >> quota >> period;
        if (quota == "max") return std::nullopt;
        const std::optional<long long> q = parse_count(quota), p = parse_count(period);
        if (q && p && *p > 0) return ceil_div(*q, *p);
    }
    const std::optional<std::string> quota_text = read_text(cgroup_root + "/cpu/cpu.cfs_quota_us");  // v1
    const std::optional<std::string> period_text = read_text(cgroup_root + "/cpu/cpu.cfs_period_us");
    if (!quota_text || !period_text) return std::nullopt;
    const std::optional<long long> quota = parse_signed(*quota_text), period = parse_signed(*period_text);
    if (!quota || !period || *quota <= 0 || *period <= 0) return std::nullopt;
    return ceil_div(*quota, *period);
}

int default_threads() {
    const int cores = physical_cores(allowed_cpus());
    const std::optional<int> limit = cgroup_cpu_limit();
    return std::max(1, limit ? std::min(cores, *limit) : cores);
}

void check_threads(int threads) {
    if (threads < 0 || threads > kMaxThreads)
        throw InputError("intra_op_threads must be an integer in [0, " + std::to_string(kMaxThreads) +
                         "] (0: one per physical core available), got " + std::to_string(threads));
}

int resolve_threads(int threads) {
    check_threads(threads);
    return threads > 0 ? threads : default_threads();
}

}  // namespace mrdl
