// Artifact verification: SHA-256 against FIPS 180-4 and Python's hashlib, and every hostile model
// directory (bit flip, wrong size, renamed INT8, another export's file, paths leaving the
// directory, an edited model.json, bad numbers, deep nesting, the older format) refused with IntegrityError or
// ManifestError naming the file and what was expected.
//   test_integrity               FIPS 180-4 vectors only
//   test_integrity TEST_DATA_DIR also the model directories (make_test_data.py)
//   test_integrity TEST_DATA_DIR BACKEND  the same, loaded by BACKEND (a Python registry name,
//                                         e.g. openvino-cpu; default onnxruntime-cpu)
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "mrdl/segmenter.hpp"
#include "test_support.hpp"

using namespace mrdl;
using namespace mrdl::testing;
namespace fs = std::filesystem;

namespace {

void fips_vectors() {
    run("SHA-256 reproduces the FIPS 180-4 examples", [] {
        const std::string abc = "abc", two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        check(sha256_hex(abc.data(), abc.size()) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
              "\"abc\"");
        check(sha256_hex("", 0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "empty");
        check(sha256_hex(two_blocks.data(), two_blocks.size()) ==
                  "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
              "the 448-bit message");
        Sha256 million;  // one million 'a' in uneven pieces: the incremental path across block edges
        const std::string piece(997, 'a');
        size_t left = 1000000;
        for (; left >= piece.size(); left -= piece.size()) million.update(piece.data(), piece.size());
        million.update(piece.data(), left);
        check(million.hex_digest() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
              "one million 'a'");
    });
}

/// A copy of the exported model directory that one test may damage.
class ModelCopy {
public:
    ModelCopy(const fs::path& source, const std::string& name)
        : root_(fs::temp_directory_path() / ("mrdl_cpp_integrity_" + name)), dir_(root_ / "model") {
        fs::remove_all(root_);
        fs::create_directories(root_);
        fs::copy(source, dir_, fs::copy_options::recursive);
    }
    ~ModelCopy() { fs::remove_all(root_); }

    const fs::path& dir() const { return dir_; }
    const fs::path& root() const { return root_; }  // the copy's parent: "outside the model directory"

    nlohmann::json manifest() const { return nlohmann::json::parse(std::ifstream(dir_ / "model.json")); }
    void write_manifest(const nlohmann::json& doc) const { std::ofstream(dir_ / "model.json") << doc.dump(2); }
    void write_manifest_text(const std::string& text) const { std::ofstream(dir_ / "model.json") << text; }

    /// Put `file` in place of artifact `key`; with `record`, also write its size and hash into
    /// model.json (what an attacker or a careless copy that rewrote the manifest would do).
    void replace_artifact(const std::string& key, const fs::path& file, bool record) const {
        nlohmann::json doc = manifest();
        const fs::path target = dir_ / doc["artifacts"][key]["file"].get<std::string>();
        fs::copy_file(file, target, fs::copy_options::overwrite_existing);
        if (!record) return;
        doc["artifacts"][key]["bytes"] = fs::file_size(target);
        doc["artifacts"][key]["sha256"] = file_sha256(target.string());
        write_manifest(doc);
    }

private:
    fs::path root_, dir_;
};

std::string recorded_sha(const ModelCopy& copy) { return copy.manifest()["artifacts"]["fp32"]["sha256"]; }

BackendChoice backend;  // the backend that loads every copy (argv[2])

void load(const ModelCopy& copy, bool verify = true, const std::string& precision = "fp32") {
    SegmenterOptions options;
    options.backend = backend.backend;
    options.device = backend.device;
    options.verify_artifacts = verify;
    options.precision = precision;
    Segmenter segmenter(copy.dir().string(), options);
}

/// Run `body` with std::cerr captured; returns what it printed.
std::string captured_stderr(const std::function<void()>& body) {
    std::ostringstream text;
    std::streambuf* saved = std::cerr.rdbuf(text.rdbuf());
    try {
        body();
    } catch (...) {
        std::cerr.rdbuf(saved);
        throw;
    }
    std::cerr.rdbuf(saved);
    return text.str();
}

void model_directories(const std::string& data) {
    const nlohmann::json index = read_index(data);
    const fs::path model = fs::path(data) / index.at("segment").at("model_dir").get<std::string>();
    const nlohmann::json& files = index.at("integrity");
    const fs::path other_export = fs::path(data) / files.at("other_export").at("file").get<std::string>();
    const fs::path no_manifest = fs::path(data) / files.at("no_manifest").at("file").get<std::string>();

    run("SHA-256 equals Python's hashlib on a 1000003-byte file and on the exported model", [&] {
        const nlohmann::json& probe = files.at("hash_probe");
        check(file_sha256(data + "/" + probe.at("file").get<std::string>()) == probe.at("sha256"), "hash_probe.bin");
        const nlohmann::json doc = nlohmann::json::parse(std::ifstream(model / "model.json"));
        for (const auto& [key, record] : doc.at("artifacts").items())
            check(file_sha256((model / record.at("file").get<std::string>()).string()) == record.at("sha256"),
                  key + " artifact: hash differs from the one mrdl-export recorded");
    });
    run("an intact copy loads, FP32 and INT8", [&] {
        const ModelCopy copy(model, "intact");
        load(copy);
        load(copy, true, "int8");
    });
    run("skipping the hash warns once per process and still checks the size", [&] {
        const ModelCopy copy(model, "no_verify");
        const std::string first = captured_stderr([&] { load(copy, false); });
        check(first.find("verify_artifacts is off, so the SHA-256 of " + (copy.dir() / "model.onnx").string()) !=
                  std::string::npos,
              "warning missing or unclear: \"" + first + "\"");
        const std::string second = captured_stderr([&] { load(copy, false, "int8"); });
        check(second.empty(), "warned twice: \"" + second + "\"");
        std::ofstream(copy.dir() / "model.onnx", std::ios::app) << 'x';
        expect_error<IntegrityError>("size still checked", "bytes, but model.json records", [&] { load(copy, false); });
    });
    run("a bit-flipped model.onnx is refused", [&] {
        const ModelCopy copy(model, "bit_flip");
        const fs::path onnx = copy.dir() / "model.onnx";
        std::fstream file(onnx, std::ios::in | std::ios::out | std::ios::binary);
        file.seekg(static_cast<std::streamoff>(fs::file_size(onnx) / 2));
        const char byte = static_cast<char>(file.get() ^ 0x10);
        file.seekp(static_cast<std::streamoff>(fs::file_size(onnx) / 2));
        file.put(byte);
        file.close();
        expect_error<IntegrityError>("bit flip",
                                     onnx.string() + ": sha256 " + file_sha256(onnx.string()) + " differs from the " +
                                         recorded_sha(copy) + " recorded in model.json (file changed or corrupt); re-export",
                                     [&] { load(copy); });
    });
    run("a model.onnx of the wrong size is refused", [&] {
        const ModelCopy copy(model, "wrong_size");
        const fs::path onnx = copy.dir() / "model.onnx";
        const uintmax_t size = fs::file_size(onnx);
        fs::resize_file(onnx, size - 100);
        expect_error<IntegrityError>("truncated", onnx.string() + ": " + std::to_string(size - 100) +
                                                      " bytes, but model.json records " + std::to_string(size),
                                     [&] { load(copy); });
        fs::resize_file(onnx, 0);
        expect_error<IntegrityError>("empty", ": 0 bytes, but model.json records", [&] { load(copy); });
    });
    run("the INT8 file renamed to model.onnx is refused, even with model.json rewritten to match", [&] {
        const ModelCopy copy(model, "renamed_int8");
        copy.replace_artifact("fp32", model / "model.int8.onnx", false);
        expect_error<IntegrityError>("renamed", "bytes, but model.json records", [&] { load(copy); });
        copy.replace_artifact("fp32", model / "model.int8.onnx", true);
        expect_error<IntegrityError>("renamed and recorded",
                                     "model.onnx: its embedded manifest says int8, but model.json records the "
                                     "\"fp32\" artifact as fp32 (a renamed file?); re-export",
                                     [&] { load(copy); });
    });
    run("another export's model.onnx is refused, also without the hash check", [&] {
        const ModelCopy copy(model, "other_export");
        const std::string ours = copy.manifest()["export_id"], theirs = files.at("other_export").at("export_id");
        copy.replace_artifact("fp32", other_export, false);
        expect_error<IntegrityError>("hash", "differs from the " + recorded_sha(copy), [&] { load(copy); });
        expect_error<IntegrityError>("same size, no hash",
                                     "model.onnx: belongs to export " + theirs + ", but model.json is export " + ours,
                                     [&] { load(copy, false); });
        copy.replace_artifact("fp32", other_export, true);
        expect_error<IntegrityError>("recorded", "belongs to export " + theirs, [&] { load(copy); });
    });
    run("an ONNX file without an embedded manifest is refused", [&] {
        const ModelCopy copy(model, "no_manifest");
        copy.replace_artifact("fp32", no_manifest, true);
        expect_error<IntegrityError>("no metadata", "model.onnx: has no embedded manifest (ONNX metadata "
                                                    "\"mrdl.manifest\")",
                                     [&] { load(copy); });
    });
    run("artifact paths cannot leave the model directory", [&] {
        const ModelCopy copy(model, "paths");
        fs::copy_file(copy.dir() / "model.onnx", copy.root() / "model.onnx");
        const std::string plain = "must be a plain file name inside the model directory";
        for (const std::string& path : {std::string("../model.onnx"), (copy.root() / "model.onnx").string()}) {
            nlohmann::json doc = copy.manifest();
            doc["artifacts"]["fp32"]["file"] = path;
            copy.write_manifest(doc);
            expect_error<ManifestError>(path, "artifacts.fp32.file \"" + path + "\" " + plain, [&] { load(copy); });
        }
    });
    run("a symlink may point inside the directory, not outside", [&] {
        const ModelCopy copy(model, "symlink");
        const fs::path onnx = copy.dir() / "model.onnx";
        fs::rename(onnx, copy.dir() / "weights.bin");
        fs::create_symlink("weights.bin", onnx);
        load(copy);
        fs::remove(onnx);
        fs::copy_file(copy.dir() / "weights.bin", copy.root() / "outside.onnx");
        fs::create_symlink(copy.root() / "outside.onnx", onnx);
        expect_error<IntegrityError>("outside", onnx.string() + ": resolves to " + (copy.root() / "outside.onnx").string() +
                                                    ", outside the model directory",
                                     [&] { load(copy); });
        fs::remove(onnx);
        fs::create_directory(onnx);
        expect_error<IntegrityError>("directory", "model.onnx: not a regular file", [&] { load(copy); });
    });
    run("a graph that differs from model.json is refused", [&] {
        const ModelCopy copy(model, "graph");
        nlohmann::json doc = copy.manifest();
        doc["outputs"][0]["name"] = "probs";
        copy.write_manifest(doc);
        expect_error<IntegrityError>("output name",
                                     "model.onnx: graph outputs [\"probabilities\" float32 [batch, 1, 64, 64]] differ "
                                     "from model.json's [\"probs\" float32 [batch, 1, 64, 64]]",
                                     [&] { load(copy); });
        doc = copy.manifest();
        doc["outputs"][0]["name"] = "probabilities";
        doc["preprocessing"]["size"] = {32, 32};
        doc["inputs"][0]["shape"] = {"batch", 3, 32, 32};
        doc["outputs"][0]["shape"] = {"batch", 1, 32, 32};
        copy.write_manifest(doc);
        expect_error<IntegrityError>("input size", "graph inputs [\"image\" float32 [batch, 3, 64, 64]] differ from "
                                                   "model.json's [\"image\" float32 [batch, 3, 32, 32]]",
                                     [&] { load(copy); });
    });
    run("an edited model.json is refused, naming the fields (the embedded copy is the reference)", [&] {
        const ModelCopy copy(model, "edited");
        const nlohmann::json original = copy.manifest();
        copy.write_manifest(nlohmann::json::parse(original.dump()));  // re-serialised, not edited: loads
        load(copy);
        const std::string edited = (copy.dir() / "model.json").string() + " was edited after export: ";
        nlohmann::json doc = original;
        doc["source_size"] = {1000, 1000};
        copy.write_manifest(doc);
        for (const std::string precision : {"fp32", "int8"})
            expect_error<IntegrityError>("source_size " + precision,
                                         edited + "source_size[0] is 1000, not 128; source_size[1] is 1000, not 128 "
                                                  "(what mrdl-export embedded in " +
                                             (copy.dir() / original["artifacts"][precision]["file"].get<std::string>())
                                                 .string() +
                                             "); restore it, or re-export to change a field",
                                         [&] { load(copy, true, precision); });
        expect_error<IntegrityError>("without the hash check", edited + "source_size[0] is 1000",
                                     [&] { load(copy, false); });
        doc = original;
        doc["postprocessing"]["threshold"] = 0.25;
        doc["note"] = "added by hand";
        doc.erase("source_size");
        copy.write_manifest(doc);
        expect_error<IntegrityError>("three fields",
                                     edited + "note was added; postprocessing.threshold is 0.25, not ",
                                     [&] { load(copy); });
        expect_error<IntegrityError>("removed", "; source_size was removed (what mrdl-export embedded",
                                     [&] { load(copy); });
    });
    run("hostile model.json files give ManifestError, not a crash", [&] {
        const ModelCopy copy(model, "manifest");
        const std::string text = copy.manifest().dump();
        const auto with = [&](const std::string& from, const std::string& to) {
            std::string edited = text;
            const size_t at = edited.find(from);
            check(at != std::string::npos, "test bug: " + from + " not in model.json");
            copy.write_manifest_text(edited.replace(at, from.size(), to));
        };
        with("\"threshold\":", "\"threshold\":NaN,\"was\":");
        expect_error<ManifestError>("NaN threshold", "NaN and Infinity are not JSON numbers", [&] { load(copy); });
        with("\"scale\":", "\"scale\":0,\"was\":");
        expect_error<ManifestError>("zero scale", "preprocessing.scale must be a finite number > 0, got 0",
                                    [&] { load(copy); });
        with("\"mrdl-deploy/2\"", "\"mrdl-deploy/1\"");
        expect_error<ManifestError>("format 1", "written by an older mrdl-export; re-export", [&] { load(copy); });
        std::string deep;
        for (int level = 0; level < 100000; ++level) deep += "{\"a\":";
        copy.write_manifest_text(deep + "1" + std::string(100000, '}'));
        expect_error<ManifestError>("deep nesting", "JSON nested deeper than 32 levels", [&] { load(copy); });
    });
}

}  // namespace

int main(int argc, char** argv) {
    const std::optional<BackendChoice> choice = parse_backend_name(argc == 3 ? argv[2] : "onnxruntime-cpu");
    if (argc > 3 || !choice) {
        std::cerr << "usage: test_integrity [TEST_DATA_DIR [BACKEND]]\n";
        return 2;
    }
    backend = *choice;
    if (argc == 1) fips_vectors();
    else model_directories(argv[1]);
    return finish();
}
