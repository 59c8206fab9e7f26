// mrdl::imageio's PNG reader decodes the shared vectors' PNG files (decode.json, written by Python)
// to the same bytes as mrdl_runtime.imaging.read_image, and refuses bad files clearly; write_png's
// atomic write leaves no temporary file when it fails.
//   test_png VECTORS_DIR
#include <algorithm>
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
    run("write_png writes through a temporary file that no failure leaves behind", [&] {
        const fs::path folder = fs::temp_directory_path() / "mrdl_cpp_test_png_write";
        fs::remove_all(folder);
        fs::create_directories(folder / "a_folder.png");
        const std::vector<uint8_t> mask{0, 255, 255, 0, 0, 255};  // (2, 3)
        const ImageView view{mask.data(), 2, 3, 1};
        const std::string written = (folder / "mask.png").string();
        imageio::write_png(written, view);
        check(imageio::read_png(written).pixels == std::vector<uint8_t>{0, 0, 0, 255, 255, 255, 255, 255, 255,
                                                                        0, 0, 0, 0, 0, 0, 255, 255, 255},
              "the written mask reads back");
        const std::string target = (folder / "a_folder.png").string();
        expect_error<InputError>("a directory", "cannot write " + target + ": it is a directory",
                                 [&] { imageio::write_png(target, view); });
        check(fs::is_directory(target) && fs::is_empty(target), "the folder is left as it was");
        const std::string missing = (folder / "missing" / "mask.png").string();
        expect_error<InputError>("a missing folder", "cannot write " + missing, [&] { imageio::write_png(missing, view); });
        fs::create_directories(folder / "blocked.png.tmp");
        const std::string blocked = (folder / "blocked.png").string();
        expect_error<InputError>("a folder in the temporary file's place", "blocked.png.tmp exists and is not a file",
                                 [&] { imageio::write_png(blocked, view); });
        check(fs::is_directory(folder / "blocked.png.tmp"), "a folder named like the temporary file is not removed");
        fs::remove(folder / "blocked.png.tmp");
        std::vector<std::string> left;
        for (const fs::directory_entry& entry : fs::directory_iterator(folder)) left.push_back(entry.path().filename());
        std::sort(left.begin(), left.end());
        check(left == std::vector<std::string>{"a_folder.png", "mask.png"},
              "only the mask and the folder remain (no .tmp file)");
        fs::remove_all(folder);
    });
    return finish();
}
