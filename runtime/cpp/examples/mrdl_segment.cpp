// mrdl_segment MODEL_DIR IN.{png,tif} OUT.png [--backend onnxruntime|tensorrt|openvino|NAME]
//              [--device cpu|cuda|tensorrt] [--precision fp32|int8|fp16|bf16] [--threads N]
//              [--hint latency|throughput] [--tile|--no-tile] [--overlap F] [--blend gaussian|constant]
//              [--max-pixels N] [--no-verify] [--help]
// Segments one PNG or TIFF image with an exported model and writes the mask as an 8-bit gray PNG at
// the input's size: 0/255 for a one-class model, the class index otherwise. The image is read with
// mrdl::imageio (mrdl/imageio.hpp), decoded by the rule of mrdl/decode.hpp (16-bit: high byte; alpha dropped), as the Python runtime decodes it;
// --backend takes the C++ kind (with --device) or a Python registry name (onnxruntime-cpu,
// onnxruntime-cuda, onnxruntime-tensorrt, tensorrt, openvino-cpu); --precision bf16 runs on openvino
// only. --threads sets the CPU threads of one model run (0, the default: one per physical core
// available, mrdl/threads.hpp); --hint is OpenVINO's performance hint. Tiling (docs/tiling.md): by default an image more than 1.5 times model.json's
// source_size is segmented in overlapping windows at the training scale; --tile forces it,
// --no-tile resizes every image whole; --overlap (default 0.25) and --blend (default gaussian) set
// the windows. The summary line says which path ran. --no-verify skips the artifact's SHA-256 check.
// OUT is checked before the model is loaded: not a folder, a path ending in .png (the only format
// written), not the input image itself, in a folder that exists.
#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "mrdl/imageio.hpp"
#include "mrdl/segmenter.hpp"
#include "mrdl/threads.hpp"

namespace {

constexpr const char* kUsage =
    "usage: mrdl_segment MODEL_DIR IN.{png,tif} OUT.png [--backend onnxruntime|tensorrt|openvino|onnxruntime-cpu|"
    "onnxruntime-cuda|onnxruntime-tensorrt|openvino-cpu] [--device cpu|cuda|tensorrt] "
    "[--precision fp32|int8|fp16|bf16] [--threads N] [--hint latency|throughput] [--tile|--no-tile] [--overlap F] "
    "[--blend gaussian|constant] [--max-pixels N] [--no-verify] [--help]";

size_t pixel_limit(const std::string& value) {
    size_t used = 0;
    unsigned long long limit = 0;
    try {
        limit = std::stoull(value, &used);
    } catch (const std::exception&) {
    }
    if (used != value.size() || limit == 0 || value[0] == '-')
        throw std::invalid_argument("--max-pixels needs a positive integer, got " + value);
    return static_cast<size_t>(limit);
}

int thread_count(const std::string& value) {
    size_t used = 0;
    int threads = -1;
    try {
        threads = std::stoi(value, &used);
    } catch (const std::exception&) {
    }
    if (used != value.size() || threads < 0 || threads > mrdl::kMaxThreads)
        throw std::invalid_argument("--threads needs an integer in [0, " + std::to_string(mrdl::kMaxThreads) +
                                    "] (0: one per physical core available), got " + value);
    return threads;
}

double overlap_fraction(const std::string& value) {
    size_t used = 0;
    double overlap = -1.0;
    try {
        overlap = std::stod(value, &used);
    } catch (const std::exception&) {
    }
    if (used != value.size() || !(overlap >= 0.0 && overlap < 1.0))
        throw std::invalid_argument("--overlap needs a number with 0 <= overlap < 1, got " + value);
    return overlap;
}

struct Arguments {
    mrdl::SegmenterOptions segmenter;
    mrdl::TileOptions tiling;
};

/// The options that take a value; --no-verify, --tile and --no-tile take none.
const std::set<std::string> kValueOptions{"--backend",  "--device",  "--precision", "--threads",
                                          "--hint",     "--overlap", "--blend",     "--max-pixels"};

Arguments parse_options(const std::vector<std::string>& args) {
    Arguments parsed;
    mrdl::SegmenterOptions& options = parsed.segmenter;
    options.with_probabilities = false;  // only the mask is written: never hold n_classes x H x W floats
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& key = args[i];
        if (key == "--no-verify") {
            options.verify_artifacts = false;
            continue;
        }
        if (key == "--tile" || key == "--no-tile") {
            parsed.tiling.mode = key == "--tile" ? mrdl::TileMode::On : mrdl::TileMode::Off;
            continue;
        }
        if (kValueOptions.count(key) == 0)
            throw std::invalid_argument("unknown option " + key + " (the options are listed below; mrdl_segment --help)");
        if (i + 1 >= args.size()) throw std::invalid_argument(key + " needs a value");
        const std::string& value = args[++i];
        const auto refuse = [&](const std::string& expected) {
            throw std::invalid_argument(key + " needs " + expected + ", got " + value);
        };
        if (key == "--backend") {
            const std::optional<mrdl::BackendChoice> choice = mrdl::parse_backend_name(value);
            if (!choice) refuse("onnxruntime, tensorrt, openvino or a registry name (onnxruntime-cpu, onnxruntime-cuda, "
                                "onnxruntime-tensorrt, openvino-cpu)");
            options.backend = choice->backend;
            if (value.find('-') != std::string::npos) options.device = choice->device;  // a registry name says both
        } else if (key == "--hint") {
            if (value != "latency" && value != "throughput") refuse("latency or throughput");
            options.hint = value == "latency" ? mrdl::PerformanceHint::Latency : mrdl::PerformanceHint::Throughput;
        } else if (key == "--device") {
            if (value == "cpu") options.device = mrdl::Device::CPU;
            else if (value == "cuda") options.device = mrdl::Device::CUDA;
            else if (value == "tensorrt") options.device = mrdl::Device::TensorRT;
            else refuse("cpu, cuda or tensorrt");
        } else if (key == "--precision") {
            options.precision = value;
        } else if (key == "--threads") {
            options.intra_op_threads = thread_count(value);
        } else if (key == "--overlap") {
            parsed.tiling.overlap = overlap_fraction(value);
        } else if (key == "--blend") {
            if (value != "gaussian" && value != "constant") refuse("gaussian or constant");
            parsed.tiling.blend = value == "gaussian" ? mrdl::Blend::Gaussian : mrdl::Blend::Constant;
        } else {  // --max-pixels
            options.max_pixels = pixel_limit(value);
        }
    }
    return parsed;
}

/// Whether two paths name one file: the same file (links, `./a` and `a`) when both exist, else the
/// same path once made absolute and normalised.
bool same_file(const std::filesystem::path& a, const std::filesystem::path& b) {
    namespace fs = std::filesystem;
    std::error_code error;
    if (fs::exists(a, error) && fs::exists(b, error)) return fs::equivalent(a, b, error) && !error;
    const fs::path canonical_a = fs::weakly_canonical(a, error);
    if (error) return false;
    const fs::path canonical_b = fs::weakly_canonical(b, error);
    return !error && canonical_a == canonical_b;
}

/// Refuse an OUT that cannot receive the mask before anything runs: a folder, not a .png path (only
/// PNG is written), the input image itself (under any spelling or link), or in a missing folder.
void check_output(const std::string& input, const std::string& output) {
    namespace fs = std::filesystem;
    const fs::path out(output);
    std::error_code error;
    if (fs::is_directory(out, error))
        throw std::invalid_argument("OUT " + output + " is a directory; give the path of a .png file to write");
    std::string extension = out.extension().string();
    std::transform(extension.begin(), extension.end(), extension.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (extension != ".png")
        throw std::invalid_argument("OUT must be a .png file (mrdl_segment writes the mask as PNG only), got " + output);
    if (same_file(input, out))
        throw std::invalid_argument("OUT " + output + " is the input image " + input +
                                    "; give another path (the mask would overwrite the image)");
    const fs::path folder = out.parent_path();
    if (!folder.empty() && !fs::is_directory(folder, error))
        throw std::invalid_argument("OUT's folder " + folder.string() + " does not exist; create it first");
}

}  // namespace

int main(int argc, char** argv) {
    for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
            std::cout << kUsage << "\n";
            return 0;
        }
    if (argc < 4) {
        std::cerr << kUsage << "\n";
        return 2;
    }
    try {
        const Arguments arguments = parse_options(std::vector<std::string>(argv + 4, argv + argc));
        check_output(argv[2], argv[3]);
        const mrdl::Segmenter segmenter(argv[1], arguments.segmenter);
        const mrdl::Image image = mrdl::imageio::read_image(argv[2], arguments.segmenter.max_pixels);
        const mrdl::Segmentation result = segmenter.segment(image.view(), {}, arguments.tiling);
        std::vector<uint8_t> mask = result.mask;  // (H, W)
        if (result.n_classes == 1)
            for (uint8_t& value : mask) value = value ? 255 : 0;
        mrdl::imageio::write_png(argv[3], mrdl::ImageView{mask.data(), result.height, result.width, 1});
        size_t foreground = 0;
        for (uint8_t value : result.mask) foreground += value != 0;
        std::cout << argv[3] << ": " << result.width << "x" << result.height << " mask, " << foreground
                  << " foreground pixels, " << (result.tiled ? "tiled at the training scale" : "whole image")
                  << " (" << segmenter.backend_description() << ")\n";
    } catch (const std::invalid_argument& error) {
        std::cerr << "mrdl_segment: " << error.what() << "\n" << kUsage << "\n";
        return 2;
    } catch (const std::exception& error) {
        std::cerr << "mrdl_segment: " << error.what() << "\n";
        return 1;
    }
    return 0;
}
