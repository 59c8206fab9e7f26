// mrdl_bench MODEL_DIR IMAGE.{png,tif} VARIANT... [--rounds N] [--batch B] [--threads N] [--no-verify]
// Latency of Segmenter::segment (preprocessing, model, postprocessing) on one image for several
// backend/precision variants of one model directory, measured fairly on a shared machine: every
// variant is loaded first, then each round runs each variant once, in an order rotated from round
// to round, so a change of load hits all of them alike. A VARIANT is BACKEND:PRECISION with a
// Python registry name, e.g. onnxruntime-cpu:fp32 openvino-cpu:fp32 openvino-cpu:bf16. Prints per
// variant the median, p10 and p90 latency (ms) and the median of its per-round ratios to the first
// variant (> 1: faster), with the 1-minute load average before and after. --batch B segments B
// copies of the image per call (at most max_batch run together); --threads as mrdl_segment's.
#include <stdlib.h>  // getloadavg

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "mrdl/imageio.hpp"
#include "mrdl/segmenter.hpp"

namespace {

constexpr const char* kUsage =
    "usage: mrdl_bench MODEL_DIR IMAGE.{png,tif} BACKEND:PRECISION... [--rounds N] [--batch B] [--threads N] "
    "[--no-verify]   (e.g. onnxruntime-cpu:fp32 openvino-cpu:bf16)";

int positive(const std::string& key, const std::string& value, int minimum) {
    size_t used = 0;
    int number = -1;
    try {
        number = std::stoi(value, &used);
    } catch (const std::exception&) {
    }
    if (used != value.size() || number < minimum)
        throw std::invalid_argument(key + " needs an integer >= " + std::to_string(minimum) + ", got " + value);
    return number;
}

double percentile(std::vector<double> values, double fraction) {
    std::sort(values.begin(), values.end());
    const double at = fraction * static_cast<double>(values.size() - 1);
    const size_t low = static_cast<size_t>(at);
    const size_t high = std::min(low + 1, values.size() - 1);
    return values[low] + (values[high] - values[low]) * (at - static_cast<double>(low));
}

double load_average() {
    double load[1] = {-1.0};
    return getloadavg(load, 1) == 1 ? load[0] : -1.0;
}

struct Variant {
    std::string name;
    mrdl::SegmenterOptions options;
    std::vector<double> milliseconds;  // one per round
};

Variant parse_variant(const std::string& text) {
    const size_t colon = text.find(':');
    const std::optional<mrdl::BackendChoice> choice = mrdl::parse_backend_name(text.substr(0, colon));
    if (colon == std::string::npos || !choice)
        throw std::invalid_argument("a variant is BACKEND:PRECISION with a registry name (onnxruntime-cpu, "
                                    "onnxruntime-cuda, onnxruntime-tensorrt, tensorrt, openvino-cpu), got " + text);
    Variant variant{text, {}, {}};
    variant.options.backend = choice->backend;
    variant.options.device = choice->device;
    variant.options.precision = text.substr(colon + 1);
    return variant;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) {
        std::cerr << kUsage << "\n";
        return 2;
    }
    try {
        int rounds = 20, batch = 1, threads = 0;
        bool verify = true;
        std::vector<Variant> variants;
        for (int i = 3; i < argc; ++i) {
            const std::string key = argv[i];
            if (key == "--no-verify") verify = false;
            else if (key.rfind("--", 0) == 0 && i + 1 >= argc) throw std::invalid_argument(key + " needs a value");
            else if (key == "--rounds") rounds = positive(key, argv[++i], 1);
            else if (key == "--batch") batch = positive(key, argv[++i], 1);
            else if (key == "--threads") threads = positive(key, argv[++i], 0);
            else if (key.rfind("--", 0) == 0) throw std::invalid_argument("unknown option " + key);
            else variants.push_back(parse_variant(key));
        }
        if (variants.empty()) throw std::invalid_argument("name at least one BACKEND:PRECISION variant");
        const mrdl::Image image = mrdl::imageio::read_image(argv[2]);
        const std::vector<mrdl::ImageView> images(static_cast<size_t>(batch), image.view());
        std::vector<mrdl::Segmenter> segmenters;
        for (Variant& variant : variants) {
            variant.options.intra_op_threads = threads;
            variant.options.verify_artifacts = verify;
            variant.options.with_probabilities = false;
            segmenters.emplace_back(argv[1], variant.options);
            segmenters.back().segment(images);  // warm-up: compiles, allocates
            std::cout << variant.name << ": " << segmenters.back().backend_description() << "\n";
        }
        const double load_before = load_average();
        for (int round = 0; round < rounds; ++round) {
            for (size_t k = 0; k < variants.size(); ++k) {
                const size_t i = (k + static_cast<size_t>(round)) % variants.size();  // rotated order
                const auto start = std::chrono::steady_clock::now();
                segmenters[i].segment(images);
                const std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - start;
                variants[i].milliseconds.push_back(took.count());
            }
        }
        std::printf("%dx%d image, batch %d, %d rounds, load average (1 min) %.2f before, %.2f after\n", image.width,
                    image.height, batch, rounds, load_before, load_average());
        std::printf("%-24s %10s %10s %10s %16s\n", "variant", "median ms", "p10 ms", "p90 ms", "x first (median)");
        for (const Variant& variant : variants) {
            std::vector<double> ratios;  // per round: the first variant's time / this one's
            for (int round = 0; round < rounds; ++round)
                ratios.push_back(variants.front().milliseconds[round] / variant.milliseconds[round]);
            std::printf("%-24s %10.2f %10.2f %10.2f %15.2fx\n", variant.name.c_str(),
                        percentile(variant.milliseconds, 0.5), percentile(variant.milliseconds, 0.1),
                        percentile(variant.milliseconds, 0.9), percentile(ratios, 0.5));
        }
        if (rounds < 10) std::printf("(fewer than 10 rounds: p10 and p90 are not meaningful)\n");
    } catch (const std::invalid_argument& error) {
        std::cerr << "mrdl_bench: " << error.what() << "\n" << kUsage << "\n";
        return 2;
    } catch (const std::exception& error) {
        std::cerr << "mrdl_bench: " << error.what() << "\n";
        return 1;
    }
    return 0;
}
