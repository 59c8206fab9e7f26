// mrdl::imageio's TIFF reader decodes make_test_data.py's TIFF files (strips, tiles, separate planes,
// 8/16-bit, both byte orders, compressed) to the same RGB bytes as mrdl_runtime.imaging.read_image
// (Pillow), with the Orientation tag applied as Pillow applies it (1 to 8 mirror, turn or transpose;
// other values leave the pixels as stored), refuses the layouts it does not take with a clear
// message, and checks the pixel limit from the header. The crafted files of tests/cpp/hostile_tiffs.py
// (index.json "hostile_tiff") decode or are refused as runtime/VECTORS.md's "TIFF byte bounds" say,
// in the Python reader's words.
//   test_tiff TEST_DATA_DIR
#include <filesystem>

#include "mrdl/errors.hpp"
#include "mrdl/imageio.hpp"
#include "test_support.hpp"

using namespace mrdl;
using namespace mrdl::testing;

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: test_tiff TEST_DATA_DIR\n";
        return 2;
    }
    const std::string dir = argv[1];
    const nlohmann::json cases = read_index(dir).at("tiff");
    check(cases.size() >= 20, "the test data holds the TIFF cases");
    size_t decoded = 0, oriented = 0;
    for (const auto& c : cases) {
        const std::string path = dir + "/" + c.at("file").get<std::string>();
        run("tiff " + c.at("name").get<std::string>(), [&] {
            if (c.contains("error")) {
                expect_error<InputError>(c.at("name"), c.at("error"), [&] { imageio::read_tiff(path); });
                return;
            }
            const Image image = imageio::read_image(path);  // through the signature dispatch, as mrdl_segment
            check(image.height == c.at("height") && image.width == c.at("width") && image.channels == 3, "size");
            const std::vector<uint8_t> expected = read_array<uint8_t>(dir + "/" + c.at("expected").get<std::string>());
            size_t differing = 0;
            for (size_t i = 0; i < expected.size() && i < image.pixels.size(); ++i) differing += expected[i] != image.pixels[i];
            check(image.pixels.size() == expected.size() && differing == 0,
                  std::to_string(differing) + " RGB values differ from Python's read_image");
            ++decoded;
            if (c.at("name").get<std::string>().find("orientation") != std::string::npos) ++oriented;
        });
    }
    check(decoded >= 20, "at least 20 TIFF files decoded");
    check(oriented >= 18, "the Orientation files (1 to 8, gray and RGB, and values outside 1..8) decoded");
    const nlohmann::json hostile = read_index(dir).at("hostile_tiff");
    check(hostile.size() >= 9, "the test data holds the crafted byte-bound TIFFs");
    size_t refused = 0;
    for (const auto& c : hostile) {
        const std::string path = dir + "/" + c.at("file").get<std::string>();
        run("hostile tiff " + c.at("name").get<std::string>(), [&] {
            check(std::filesystem::file_size(path) == c.at("bytes").get<uint64_t>(), "the file's size");
            if (c.contains("error")) {
                expect_error<InputError>(c.at("name"), c.at("error"), [&] { imageio::read_image(path); });
                ++refused;
                return;
            }
            const Image image = imageio::read_image(path);
            check(image.height == c.at("height") && image.width == c.at("width") && image.channels == 3, "size");
            check(image.pixels == read_array<uint8_t>(dir + "/" + c.at("expected").get<std::string>()),
                  "RGB differs from the crafted file's expected pixels");
        });
    }
    check(refused >= 5 && refused < hostile.size(), "both refused and decoded crafted files");
    const std::string sample = dir + "/" + cases.at(0).at("file").get<std::string>();
    run("the pixel limit is checked from the header", [&] {
        const Image image = imageio::read_tiff(sample);
        const size_t pixels = static_cast<size_t>(image.height) * image.width;
        expect_error<InputError>("over the limit", "pixels exceeds the limit of " + std::to_string(pixels - 1),
                                 [&] { imageio::read_tiff(sample, pixels - 1); });
        check(imageio::read_tiff(sample, pixels).pixels == image.pixels, "exactly at the limit is accepted");
    });
    run("files that are not TIFF (or PNG) are refused", [&] {
        const std::filesystem::path bad = std::filesystem::temp_directory_path() / "mrdl_cpp_test_tiff_bad.tif";
        std::ofstream(bad) << "not a tiff";
        expect_error<InputError>("not tiff", "no TIFF signature", [&] { imageio::read_tiff(bad.string()); });
        expect_error<InputError>("neither", "neither a PNG nor a TIFF", [&] { imageio::read_image(bad.string()); });
        std::filesystem::remove(bad);
        expect_error<InputError>("missing", "cannot open /nonexistent.tif", [] { imageio::read_tiff("/nonexistent.tif"); });
    });
    return finish();
}
