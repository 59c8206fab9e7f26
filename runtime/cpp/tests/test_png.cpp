// mrdl::imageio's PNG reader decodes the shared vectors' PNG files (decode.json, written by Python)
// to the same bytes as mrdl_runtime.imaging.read_image, and refuses bad files clearly.
//   test_png VECTORS_DIR
#include <filesystem>
#include <fstream>

#include "mrdl/errors.hpp"
#include "mrdl/imageio.hpp"
#include "test_support.hpp"

using namespace mrdl;
using namespace mrdl::testing;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: test_png VECTORS_DIR\n";
        return 2;
    }
    const std::string dir = argv[1];
    std::ifstream stream(dir + "/decode.json");
    if (!stream) {
        std::cerr << "no " << dir << "/decode.json (written by tests/test_runtime_vectors.py)\n";
        return 1;
    }
    const nlohmann::json files = nlohmann::json::parse(stream).at("files");
    check(files.size() >= 10, "decode.json holds the PNG cases");
    for (const auto& c : files) {
        run("png " + c.at("name").get<std::string>(), [&] {
            const Image image = imageio::read_png(dir + "/" + c.at("file").get<std::string>());
            check(image.height == c.at("height") && image.width == c.at("width") && image.channels == 3, "size");
            check(image.pixels == c.at("rgb").get<std::vector<uint8_t>>(), "RGB differs from Python's read_image");
        });
    }
    const std::string sample = dir + "/" + files.at(0).at("file").get<std::string>();
    run("the pixel limit is checked from the header", [&] {
        const Image image = imageio::read_png(sample);
        const size_t pixels = static_cast<size_t>(image.height) * image.width;
        expect_error<InputError>("over the limit",
                                 "image of " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                                     " = " + std::to_string(pixels) + " pixels exceeds the limit of " +
                                     std::to_string(pixels - 1) + " pixels; raise max_pixels",
                                 [&] { imageio::read_png(sample, pixels - 1); });
        check(imageio::read_png(sample, pixels).pixels == image.pixels, "exactly at the limit is accepted");
    });
    run("files that are not whole PNGs are refused", [&] {
        const fs::path bad = fs::temp_directory_path() / "mrdl_cpp_test_png_bad.png";
        std::ofstream(bad) << "not a png";
        expect_error<InputError>("not png", "cannot read " + bad.string() + " as a PNG image: no PNG signature",
                                 [&] { imageio::read_png(bad.string()); });
        const uintmax_t size = fs::file_size(sample);
        fs::copy_file(sample, bad, fs::copy_options::overwrite_existing);
        fs::resize_file(bad, size - 20);  // cut inside the image data
        expect_error<InputError>("truncated", "cannot decode " + bad.string() + " as a PNG image:",
                                 [&] { imageio::read_png(bad.string()); });
        fs::remove(bad);
        expect_error<InputError>("missing", "cannot open /nonexistent.png", [] { imageio::read_png("/nonexistent.png"); });
    });
    return finish();
}
