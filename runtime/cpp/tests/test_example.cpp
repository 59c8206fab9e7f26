// The example program: mrdl_segment MODEL_DIR IN.{png,tif} OUT.png writes mrdl_runtime's mask, from a PNG
// and from a 16-bit tiled TIFF of the same pixels; with --tile/--no-tile/--overlap/--blend, mrdl_runtime's
// tiled masks, and its summary line says which path ran. Bad arguments are refused before anything
// runs: an OUT that is a folder, the input itself, not .png; unknown options; --threads above 1024.
//   test_example MRDL_SEGMENT_EXE TEST_DATA_DIR
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "mrdl/imageio.hpp"
#include "test_support.hpp"

using namespace mrdl;
using namespace mrdl::testing;

namespace {

struct Outcome {
    int status = -1;     // the exit status; -1 when killed by a signal
    std::string output;  // stdout and stderr together
};

Outcome run_command(const std::string& command) {
    Outcome outcome;
    FILE* pipe = popen((command + " 2>&1").c_str(), "r");
    if (!pipe) return outcome;
    char buffer[4096];
    size_t read = 0;
    while ((read = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) outcome.output.append(buffer, read);
    const int status = pclose(pipe);
    outcome.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return outcome;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

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
    run("OUT is refused before running: a folder, the input image, not .png; unknown options named", [&] {
        namespace fs = std::filesystem;
        const std::string png = dir + "/" + segment.at("cases").at(0).at("png").get<std::string>();
        const std::string prefix = "\"" + exe + "\" \"" + model + "\" ";
        const fs::path folder = out_dir / "a_folder";
        fs::create_directories(folder);
        Outcome outcome = run_command(prefix + "\"" + png + "\" \"" + folder.string() + "\"");
        check(outcome.status == 2 && contains(outcome.output, "is a directory"), "a folder OUT: " + outcome.output);
        check(!fs::exists(folder.string() + ".tmp"), "a folder OUT left " + folder.string() + ".tmp");

        const fs::path image = out_dir / "image.png";
        fs::copy_file(png, image, fs::copy_options::overwrite_existing);
        const auto before = fs::file_size(image);
        const fs::path link = out_dir / "link.png";
        fs::remove(link);
        fs::create_symlink(image, link);
        for (const std::string out : {image.string(), (out_dir / "." / "image.png").string(), link.string()}) {
            outcome = run_command(prefix + "\"" + image.string() + "\" \"" + out + "\"");
            check(outcome.status == 2 && contains(outcome.output, "is the input image"), "OUT == IN as " + out + ": " +
                                                                                           outcome.output);
        }
        check(fs::file_size(image) == before && imageio::read_png(image.string()).pixels == imageio::read_png(png).pixels,
              "the input image was overwritten");

        outcome = run_command(prefix + "\"" + png + "\" \"" + (out_dir / "mask.jpg").string() + "\"");
        check(outcome.status == 2 && contains(outcome.output, "OUT must be a .png file"), "a .jpg OUT: " + outcome.output);
        check(!fs::exists(out_dir / "mask.jpg"), "a .jpg OUT was written");
        outcome = run_command(prefix + "\"" + png + "\" \"" + (out_dir / "no_folder" / "mask.png").string() + "\"");
        check(outcome.status == 2 && contains(outcome.output, "does not exist"), "OUT in a missing folder: " + outcome.output);

        const std::string valid = prefix + "\"" + png + "\" \"" + (out_dir / "mask.png").string() + "\"";
        outcome = run_command(valid + " --bogus");
        check(outcome.status == 2 && contains(outcome.output, "unknown option --bogus") &&
                  !contains(outcome.output, "needs a value"),
              "--bogus: " + outcome.output);
        outcome = run_command(valid + " --backend bogus");
        check(outcome.status == 2 && contains(outcome.output, "--backend needs onnxruntime, tensorrt, openvino"),
              "--backend bogus: " + outcome.output);
        outcome = run_command("timeout 60 " + valid + " --threads 1000000");  // hung before the bound
        check(outcome.status == 2 && contains(outcome.output, "--threads needs an integer in [0, 1024]"),
              "--threads 1000000: " + outcome.output);
        outcome = run_command("\"" + exe + "\" --help");
        check(outcome.status == 0 && contains(outcome.output, "usage: mrdl_segment"), "--help: " + outcome.output);
    });
    std::filesystem::remove_all(out_dir);
    return finish();
}
