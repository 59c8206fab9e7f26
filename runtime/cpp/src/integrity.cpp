// Artifact verification before a backend loads the file: location, size and SHA-256 against model.json.
#include "mrdl/integrity.hpp"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>

#include "mrdl/errors.hpp"

namespace mrdl {
namespace {

namespace fs = std::filesystem;

void warn_hash_skipped(const std::string& path) {
    static std::once_flag once;
    std::call_once(once, [&] {
        std::cerr << "mrdl: warning: verify_artifacts is off, so the SHA-256 of " << path
                  << " (and of any artifact loaded later) is not checked, only its size: a corrupt or replaced "
                     "file of the same size would load\n";
    });
}

}  // namespace

VerifiedArtifact read_verified_artifact(const std::string& model_dir, const Manifest& manifest,
                                        const std::string& key, bool verify_hash) {
    const auto entry = manifest.artifacts.find(key);
    if (entry == manifest.artifacts.end()) throw ManifestError("model.json lists no \"" + key + "\" artifact");
    VerifiedArtifact artifact{key, (fs::path(model_dir) / entry->second.file).string(), entry->second, {}, verify_hash};
    const std::string& path = artifact.path;
    const Artifact& record = artifact.record;

    std::error_code error;
    if (!fs::exists(fs::symlink_status(path, error)))
        throw IntegrityError(path + ": listed in model.json as the \"" + key +
                             "\" artifact but missing; copy the whole model directory or re-export");
    const fs::path real = fs::canonical(path, error);
    const fs::path real_dir = fs::canonical(model_dir, error);
    if (error || real.parent_path() != real_dir)
        throw IntegrityError(path + ": resolves to " + (error ? "nothing (" + error.message() + ")" : real.string()) +
                             ", outside the model directory " + real_dir.string() +
                             "; an artifact must be a file inside it");
    if (!fs::is_regular_file(real, error))
        throw IntegrityError(path + ": not a regular file; model.json's \"" + key + "\" artifact must be one");
    const uintmax_t size = fs::file_size(real, error);
    if (error || size != record.bytes)
        throw IntegrityError(path + ": " + (error ? "size unknown (" + error.message() + ")" : std::to_string(size)) +
                             " bytes, but model.json records " + std::to_string(record.bytes) +
                             " (file truncated, replaced or corrupt); re-export");

    std::ifstream stream(real, std::ios::binary);
    if (!stream) throw IntegrityError(path + ": cannot be opened for reading");
    artifact.bytes.resize(static_cast<size_t>(record.bytes));
    stream.read(artifact.bytes.data(), static_cast<std::streamsize>(artifact.bytes.size()));
    if (static_cast<uint64_t>(stream.gcount()) != record.bytes || stream.peek() != std::ifstream::traits_type::eof())
        throw IntegrityError(path + ": changed size while being read (model.json records " +
                             std::to_string(record.bytes) + " bytes)");
    if (!verify_hash) {
        warn_hash_skipped(path);
        return artifact;
    }
    const std::string found = sha256_hex(artifact.bytes.data(), artifact.bytes.size());
    if (found != record.sha256)
        throw IntegrityError(path + ": sha256 " + found + " differs from the " + record.sha256 +
                             " recorded in model.json (file changed or corrupt); re-export");
    return artifact;
}

}  // namespace mrdl
