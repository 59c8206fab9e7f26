// Artifact verification: the file a backend loads is the one model.json records (name, size, SHA-256).
#pragma once

#include "mrdl/export.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "mrdl/manifest.hpp"

namespace mrdl {

/// Incremental SHA-256 (FIPS 180-4). `hex_digest` finishes the hash; call it once.
class MRDL_API Sha256 {
public:
    Sha256();
    void update(const void* data, size_t size);
    /// The 64 lower-case hex digits of the digest.
    std::string hex_digest();

private:
    void compress(const uint8_t* block);

    uint32_t state_[8];
    uint8_t buffer_[64] = {};
    size_t buffered_ = 0;
    uint64_t length_ = 0;
};

/// Lower-case hex SHA-256 of a buffer.
MRDL_API std::string sha256_hex(const void* data, size_t size);
/// Lower-case hex SHA-256 of a file's bytes (throws Error when it cannot be read).
MRDL_API std::string file_sha256(const std::string& path);

/// An artifact read into memory after its checks passed.
struct MRDL_API VerifiedArtifact {
    std::string key;            // "fp32", "int8", "fp16" or "tensorrt"
    std::string path;           // model_dir / record.file
    Artifact record;            // what model.json says about the file
    std::vector<char> bytes;    // the file's content (record.bytes long)
    bool hash_checked = false;  // false only when SegmenterOptions::verify_artifacts is off
};

/// Read artifact `key` of `manifest` from `model_dir` and check it: a regular file inside the
/// directory (a symlink may point only inside it), exactly record.bytes long and, when
/// `verify_hash`, with SHA-256 == record.sha256. Throws IntegrityError naming the file and what
/// was expected. With `verify_hash` false the hash is skipped (size still checked) and a warning
/// is printed to stderr, once per process.
MRDL_API VerifiedArtifact read_verified_artifact(const std::string& model_dir, const Manifest& manifest,
                                        const std::string& key, bool verify_hash);

}  // namespace mrdl
