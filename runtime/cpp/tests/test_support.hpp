// A minimal check harness for the ctest programs and readers for make_test_data.py's output.
#pragma once

#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mrdl::testing {

inline int& failures() {
    static int count = 0;
    return count;
}

inline void check(bool ok, const std::string& what) {
    if (!ok) {
        ++failures();
        std::cerr << "FAILED: " << what << "\n";
    }
}

/// Run `body`, counting a thrown exception as a failure.
inline void run(const std::string& name, const std::function<void()>& body) {
    const int before = failures();
    try {
        body();
    } catch (const std::exception& error) {
        check(false, name + " threw: " + error.what());
    }
    std::cout << (failures() == before ? "ok   " : "FAIL ") << name << "\n";
}

/// Expect `body` to throw an exception of type E whose message contains `fragment`.
template <typename E>
void expect_error(const std::string& name, const std::string& fragment, const std::function<void()>& body) {
    try {
        body();
        check(false, name + ": expected an error mentioning \"" + fragment + "\", none thrown");
    } catch (const E& error) {
        const std::string message = error.what();
        check(message.find(fragment) != std::string::npos,
              name + ": message \"" + message + "\" does not mention \"" + fragment + "\"");
    }
}

inline int finish() {
    if (failures()) std::cerr << failures() << " check(s) failed\n";
    return failures() ? 1 : 0;
}

template <typename T>
std::vector<T> read_array(const std::string& path) {
    std::ifstream stream(path, std::ios::binary);
    if (!stream) throw std::runtime_error("cannot open " + path + " (run make_test_data.py first)");
    std::vector<char> bytes((std::istreambuf_iterator<char>(stream)), std::istreambuf_iterator<char>());
    if (bytes.size() % sizeof(T)) throw std::runtime_error(path + " has a partial element");
    std::vector<T> values(bytes.size() / sizeof(T));
    std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(values.data()));
    return values;
}

inline nlohmann::json read_index(const std::string& dir) {
    std::ifstream stream(dir + "/index.json");
    if (!stream) throw std::runtime_error("no " + dir + "/index.json (written by the repo's tests/cpp/make_test_data.py)");
    return nlohmann::json::parse(stream);
}

inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size()) return INFINITY;
    float worst = 0.0f;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
    return worst;
}

}  // namespace mrdl::testing
