// The example program: mrdl_segment MODEL_DIR IN.{png,tif} OUT.png writes mrdl_runtime's mask, from a PNG
// and from a 16-bit tiled TIFF of the same pixels; with --tile/--no-tile/--overlap/--blend, mrdl_runtime's
// tiled masks, and its summary line says which path ran.
//   test_example MRDL_SEGMENT_EXE TEST_DATA_DIR
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "mrdl/imageio.hpp"
#include "test_support.hpp"

using namespace mrdl;
using namespace mrdl::testing;

int main(int argc, char** argv) {
    if (argc != 3) {
        std::cerr << "usage: test_example MRDL_SEGMENT_EXE TEST_DATA_DIR\n";
        return 2;
    }
    const std::string exe = argv[1];
    const std::string dir = argv[2];
    const nlohmann::json segment = read_index(dir).at("segment");
    const std::string model = dir + "/" + segment.at("model_dir").get<std::string>();
    const std::filesystem::path out_dir = std::filesystem::temp_directory_path() / "mrdl_cpp_test_example";
    std::filesystem::create_directories(out_dir);

    for (const auto& c : segment.at("cases")) {
        for (const std::string format : {"png", "tiff"}) {
            const std::string name = c.at("name").get<std::string>();
            run("mrdl_segment " + name + " (" + format + ")", [&] {
                const std::string out = (out_dir / (name + ".png")).string();
                const std::string command = "\"" + exe + "\" \"" + model + "\" \"" + dir + "/" +
                                            c.at(format).get<std::string>() + "\" \"" + out + "\" --threads 1";
                check(std::system(command.c_str()) == 0, "command failed: " + command);
                const Image written = imageio::read_png(out);
                const Image expected = imageio::read_png(dir + "/" + c.at("mask_png").get<std::string>());
                check(written.height == expected.height && written.width == expected.width, "mask size");
                check(written.pixels == expected.pixels, "the PNG mask differs from mrdl_runtime's");
            });
        }
    }
    for (const auto& c : segment.at("tiled_cases")) {
        const std::string name = c.at("name");
        const nlohmann::json& tile = c.at("tile");
        std::string flags = tile.is_string() ? "" : tile.get<bool>() ? " --tile" : " --no-tile";
        flags += " --overlap " + std::to_string(c.at("overlap").get<double>()) + " --blend " + c.at("blend").get<std::string>();
        run("mrdl_segment " + name + flags, [&] {
            const std::string out = (out_dir / (name + ".png")).string();
            const std::string log = (out_dir / (name + ".txt")).string();
            const std::string command = "\"" + exe + "\" \"" + model + "\" \"" + dir + "/" + c.at("png").get<std::string>() +
                                        "\" \"" + out + "\"" + flags + " > \"" + log + "\"";
            check(std::system(command.c_str()) == 0, "command failed: " + command);
            check(imageio::read_png(out).pixels == imageio::read_png(dir + "/" + c.at("mask_png").get<std::string>()).pixels,
                  "the PNG mask differs from mrdl_runtime's tiled one");
            std::ifstream stream(log);
            const std::string said((std::istreambuf_iterator<char>(stream)), std::istreambuf_iterator<char>());
            const bool tiled = c.at("tiled");
            check(said.find(tiled ? "tiled at the training scale" : "whole image") != std::string::npos,
                  "the summary line does not say which path ran: " + said);
        });
    }
    run("bad arguments give usage and a non-zero exit", [&] {
        check(std::system(("\"" + exe + "\" only-one-arg").c_str()) != 0, "missing arguments accepted");
        const std::string missing = "\"" + exe + "\" \"" + model + "\" /nonexistent.png " + (out_dir / "x.png").string();
        check(std::system(missing.c_str()) != 0, "a missing input image was accepted");
        const std::string png = dir + "/" + segment.at("cases").at(0).at("png").get<std::string>();
        const std::string threads = "\"" + exe + "\" \"" + model + "\" \"" + png + "\" " + (out_dir / "x.png").string() +
                                    " --threads -1";
        check(std::system(threads.c_str()) != 0, "--threads -1 was accepted");
        check(std::system((threads.substr(0, threads.size() - 12) + " --overlap 1").c_str()) != 0,
              "--overlap 1 was accepted");
    });
    std::filesystem::remove_all(out_dir);
    return finish();
}
