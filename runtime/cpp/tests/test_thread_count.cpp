// The default thread count (mrdl/threads.hpp) on fake sysfs and cgroup trees, under a narrowed
// affinity mask, and, given a Python with mrdl_runtime, equal to mrdl_runtime.threads.default_threads();
// counts above kMaxThreads refused by SegmenterOptions before a model is loaded.
//   test_thread_count [PYTHON]
#include <sched.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "mrdl/errors.hpp"
#include "mrdl/segmenter.hpp"
#include "mrdl/threads.hpp"
#include "test_support.hpp"

using namespace mrdl;
using namespace mrdl::testing;
namespace fs = std::filesystem;

namespace {

/// A temporary folder holding fake sysfs / cgroup files, removed with the object.
class FakeTree {
public:
    explicit FakeTree(const std::string& name) : root_(fs::temp_directory_path() / ("mrdl_cpp_threads_" + name)) {
        fs::remove_all(root_);
        fs::create_directories(root_);
    }
    ~FakeTree() { fs::remove_all(root_); }
    void write(const std::string& relative, const std::string& text) const {
        fs::create_directories((root_ / relative).parent_path());
        std::ofstream(root_ / relative) << text;
    }
    std::string path() const { return root_.string(); }

private:
    fs::path root_;
};

/// What `command` prints, first line, or "" when it fails.
std::string output_of(const std::string& command) {
    FILE* pipe = popen(command.c_str(), "r");
    if (!pipe) return "";
    char line[256] = {};
    const bool read = std::fgets(line, sizeof(line), pipe) != nullptr;
    const int status = pclose(pipe);
    std::string text = read && status == 0 ? line : "";
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
    return text;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc > 2) {
        std::cerr << "usage: test_thread_count [PYTHON]\n";
        return 2;
    }
    run("CPU lists parse as Linux writes them; anything else is not one", [] {
        check(parse_cpu_list("0-3,8,10-11\n") == std::set<int>{0, 1, 2, 3, 8, 10, 11}, "0-3,8,10-11");
        check(parse_cpu_list("5") == std::set<int>{5}, "5");
        check(parse_cpu_list("") == std::set<int>{}, "empty");
        for (const char* bad : {"3-1", "a", "1-b", "-1", "0-99999999", "1,,x"})
            check(!parse_cpu_list(bad).has_value(), std::string("\"") + bad + "\" is refused");
    });
    run("SMT siblings count once; a CPU without topology counts as its own core", [] {
        const FakeTree sysfs("sysfs");  // 2 cores of 2 threads (0,2 and 1,3), cpu4-5 on an old kernel, cpu6 bare
        sysfs.write("cpu0/topology/core_cpus_list", "0,2\n");
        sysfs.write("cpu2/topology/core_cpus_list", "0,2\n");
        sysfs.write("cpu1/topology/core_cpus_list", "1,3\n");
        sysfs.write("cpu3/topology/core_cpus_list", "1,3\n");
        sysfs.write("cpu4/topology/thread_siblings_list", "4-5\n");
        sysfs.write("cpu5/topology/thread_siblings_list", "4-5\n");
        sysfs.write("cpu7/topology/core_cpus_list", "garbage\n");
        check(physical_cores({0, 1, 2, 3}, sysfs.path()) == 2, "4 logical CPUs on 2 cores");
        check(physical_cores({0, 2}, sysfs.path()) == 1, "two siblings of one core");
        check(physical_cores({0, 1}, sysfs.path()) == 2, "one thread of each core");
        check(physical_cores({4, 5}, sysfs.path()) == 1, "thread_siblings_list where core_cpus_list is absent");
        check(physical_cores({6}, sysfs.path()) == 1 && physical_cores({6, 7}, sysfs.path()) == 2,
              "no or unreadable topology: each CPU its own core");
        check(physical_cores({0, 1, 2, 3, 4, 5, 6, 7}, sysfs.path()) == 5, "all of them: 2 + 1 + 1 + 1");
        check(physical_cores({}, sysfs.path()) == 1, "at least 1");
    });
    run("the cgroup CPU quota in whole CPUs, rounded up (v2, then v1)", [] {
        const FakeTree v2("cgroup_v2");
        check(!cgroup_cpu_limit(v2.path()).has_value(), "no files: no quota");
        v2.write("cpu.max", "max 100000\n");
        check(!cgroup_cpu_limit(v2.path()).has_value(), "max: no quota");
        v2.write("cpu.max", "250000 100000\n");
        check(cgroup_cpu_limit(v2.path()) == 3, "2.5 CPUs -> 3");
        v2.write("cpu.max", "50000 100000\n");
        check(cgroup_cpu_limit(v2.path()) == 1, "0.5 CPU -> 1");
        const FakeTree v1("cgroup_v1");
        v1.write("cpu/cpu.cfs_quota_us", "-1\n");
        v1.write("cpu/cpu.cfs_period_us", "100000\n");
        check(!cgroup_cpu_limit(v1.path()).has_value(), "v1 quota -1: no quota");
        v1.write("cpu/cpu.cfs_quota_us", "150000\n");
        check(cgroup_cpu_limit(v1.path()) == 2, "v1 1.5 CPUs -> 2");
    });
    run("0 means the default; a count outside [0, kMaxThreads] is refused", [] {
        check(resolve_threads(3) == 3, "3 stays 3");
        check(resolve_threads(0) == default_threads() && default_threads() >= 1, "0 is default_threads()");
        check(kMaxThreads == 1024 && resolve_threads(kMaxThreads) == kMaxThreads, "kMaxThreads is accepted");
        expect_error<InputError>("negative",
                                 "intra_op_threads must be an integer in [0, 1024] (0: one per physical core available), got -1",
                                 [] { resolve_threads(-1); });
        expect_error<InputError>("above the bound", "intra_op_threads must be an integer in [0, 1024]", [] {
            resolve_threads(kMaxThreads + 1);
        });
    });
    run("SegmenterOptions refuses the thread count before anything is loaded (no hang on --threads 1000000)", [] {
        SegmenterOptions options;
        options.intra_op_threads = 1000000;
        const std::string message = "intra_op_threads must be an integer in [0, 1024] (0: one per physical core "
                                    "available), got 1000000";
        expect_error<InputError>("validate", message, [&] { options.validate(); });
        expect_error<InputError>("Segmenter", message, [&] { Segmenter s("/nonexistent-model-dir", options); });
        expect_error<InputError>("make_backend", message, [&] { make_backend("/nonexistent-model-dir", Manifest{}, options); });
        options.intra_op_threads = kMaxThreads;
        options.validate();
    });
    run("the affinity mask limits the count (taskset to one CPU: 1 thread)", [] {
        cpu_set_t saved;
        check(sched_getaffinity(0, sizeof(saved), &saved) == 0, "read the affinity mask");
        const std::set<int> before = allowed_cpus();
        check(!before.empty() && static_cast<int>(before.size()) == CPU_COUNT(&saved), "allowed_cpus() is the mask");
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(*before.begin(), &one);
        check(sched_setaffinity(0, sizeof(one), &one) == 0, "narrow the mask");
        check(allowed_cpus() == std::set<int>{*before.begin()}, "allowed_cpus() follows the mask");
        check(default_threads() == 1, "one CPU allowed: 1 thread");
        sched_setaffinity(0, sizeof(saved), &saved);
        check(allowed_cpus() == before, "mask restored");
        check(default_threads() <= static_cast<int>(before.size()), "never more threads than allowed CPUs");
    });
    if (argc == 2) {
        run("equal to mrdl_runtime.threads.default_threads() on this machine", [&] {
            const std::string python = output_of(
                std::string("\"") + argv[1] +
                "\" -c \"from mrdl_runtime.threads import default_threads; print(default_threads())\"");
            check(!python.empty(), "the Python runtime printed its default");
            check(python == std::to_string(default_threads()),
                  "C++ " + std::to_string(default_threads()) + " vs Python " + python);
            std::cout << "     default_threads(): " << default_threads() << " (Python: " << python << ")\n";
        });
    }
    return finish();
}
