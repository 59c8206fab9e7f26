// TIFF byte bounds (runtime/VECTORS.md): the first directory's chunk tags read as stored, then checked
// against the file's size and each chunk's decoded size, before libtiff reads any strip or tile.
#include "tiff_bounds.hpp"

#include <algorithm>
#include <fstream>
#include <vector>

#include "mrdl/errors.hpp"

namespace mrdl::imageio {
namespace {

// A compressed strip or tile holds at most kCompressedFactor x its decoded bytes + kCompressedSlack:
// no TIFF codec expands data that much (LZW at most 1.5x; the slack covers JPEG tables of small tiles).
constexpr uint64_t kCompressedFactor = 4, kCompressedSlack = 1024;

/// The file's bytes, read at absolute offsets in its byte order; reading past the end is an
/// InputError naming what was being read.
class RawTiff {
public:
    explicit RawTiff(const std::string& path) : path_(path), file_(path, std::ios::binary) {
        if (!file_) throw InputError("cannot open " + path);
        file_.seekg(0, std::ios::end);
        size_ = static_cast<uint64_t>(file_.tellg());
        char order[2] = {};
        read_bytes(0, order, 2, "the byte order");
        big_endian_ = order[0] == 'M';
    }

    uint64_t size() const { return size_; }

    /// The `bytes`-byte unsigned integer (1 to 8) at `offset`.
    uint64_t number(uint64_t offset, int bytes, const char* what) {
        unsigned char raw[8] = {};
        read_bytes(offset, raw, bytes, what);
        uint64_t value = 0;
        for (int i = 0; i < bytes; ++i) value |= uint64_t{raw[big_endian_ ? bytes - 1 - i : i]} << (8 * i);
        return value;
    }

    /// `count` integers of `bytes` bytes each from `offset`, read in one go (count x bytes is at most
    /// the file's size: checked first).
    std::vector<uint64_t> numbers(uint64_t offset, uint64_t count, int bytes, const char* what) {
        if (count > size_ / bytes) damaged(what);
        std::vector<unsigned char> raw(static_cast<size_t>(count * bytes));
        read_bytes(offset, raw.data(), raw.size(), what);
        std::vector<uint64_t> values(static_cast<size_t>(count));
        for (size_t k = 0; k < values.size(); ++k)
            for (int i = 0; i < bytes; ++i)
                values[k] |= uint64_t{raw[k * bytes + (big_endian_ ? bytes - 1 - i : i)]} << (8 * i);
        return values;
    }

    [[noreturn]] void damaged(const std::string& what) const {
        throw InputError("cannot decode " + path_ + " as a TIFF image: " + what + " lies past the end of the file (" +
                         std::to_string(size_) + " bytes)");
    }

private:
    void read_bytes(uint64_t offset, void* out, size_t bytes, const char* what) {
        if (bytes > size_ || offset > size_ - bytes) damaged(what);
        file_.seekg(static_cast<std::streamoff>(offset));
        if (!file_.read(static_cast<char*>(out), static_cast<std::streamsize>(bytes))) damaged(what);
    }

    std::string path_;
    std::ifstream file_;
    uint64_t size_ = 0;
    bool big_endian_ = false;
};

/// The first `wanted` values (fewer where the tag holds fewer) of `tag` in the first directory.
std::vector<uint64_t> tag_values(RawTiff& file, uint16_t tag, uint64_t wanted, const std::string& path,
                                 const char* name) {
    const bool big = file.number(2, 2, "the TIFF header") == 43;  // BigTIFF: 8-byte counts and offsets
    const int count_bytes = big ? 8 : 2, entry_bytes = big ? 20 : 12, field_bytes = big ? 8 : 4;
    const uint64_t directory = file.number(big ? 8 : 4, big ? 8 : 4, "the first directory's offset");
    const uint64_t entries = file.number(directory, count_bytes, "the first directory");
    if (entries > file.size() / entry_bytes) file.damaged("the first directory");
    for (uint64_t e = 0; e < entries; ++e) {
        const uint64_t entry = directory + count_bytes + e * entry_bytes;
        if (file.number(entry, 2, "a directory entry") != tag) continue;
        const uint64_t type = file.number(entry + 2, 2, name);
        const int value_bytes = type == 3 ? 2 : type == 4 || type == 13 ? 4 : type == 16 || type == 18 ? 8 : 0;
        if (value_bytes == 0)
            throw InputError(path + ": TIFF " + name + " of type " + std::to_string(type) +
                             "; expected SHORT, LONG or LONG8 values");
        const uint64_t count = file.number(entry + 4, big ? 8 : 4, name);
        const uint64_t field = entry + 4 + (big ? 8 : 4);
        const bool inline_values = count <= static_cast<uint64_t>(field_bytes / value_bytes);
        const uint64_t at = inline_values ? field : file.number(field, field_bytes, name);
        return file.numbers(at, std::min(count, wanted), value_bytes, name);
    }
    return {};
}

}  // namespace

void check_chunk_bytes(const std::string& path, const ChunkGeometry& g) {
    const uint64_t across = (uint64_t{g.width} + g.chunk_width - 1) / g.chunk_width;
    const uint64_t down = (uint64_t{g.height} + g.chunk_height - 1) / g.chunk_height;
    const uint64_t per_plane = down * across, needed = per_plane * static_cast<uint64_t>(g.planes);
    RawTiff file(path);
    const char* offsets_name = g.tiled ? "TileOffsets" : "StripOffsets";
    const char* counts_name = g.tiled ? "TileByteCounts" : "StripByteCounts";
    const std::vector<uint64_t> offsets = tag_values(file, g.tiled ? 324 : 273, needed, path, offsets_name);
    const std::vector<uint64_t> counts = tag_values(file, g.tiled ? 325 : 279, needed, path, counts_name);
    const uint64_t listed = std::min(offsets.size(), counts.size());
    for (int plane = 0; plane < g.planes; ++plane) {
        if ((plane + 1) * per_plane > listed)
            throw InputError(path + ": TIFF with " + std::to_string(listed) + " tiles / strips; expected at least " +
                             std::to_string((plane + 1) * per_plane));
        for (uint64_t k = 0; k < per_plane; ++k) {
            const uint64_t index = plane * per_plane + k, offset = offsets[index], count = counts[index];
            const uint64_t rows =
                g.tiled ? g.chunk_height : std::min<uint64_t>(g.chunk_height, g.height - (k / across) * g.chunk_height);
            const uint64_t decoded = rows * g.row_bytes;
            if (count > file.size() || offset > file.size() - count)  // o + n > F, without overflow (n may be 2^63)
                throw InputError(path + ": TIFF tile or strip " + std::to_string(index) + " is truncated: " +
                                 std::to_string(count) + " bytes at offset " + std::to_string(offset) +
                                 " go past the end of the file (" + std::to_string(file.size()) + " bytes)");
            const uint64_t bound = kCompressedFactor * decoded + kCompressedSlack;
            if (g.compressed && count > bound)
                throw InputError(path + ": TIFF tile or strip " + std::to_string(index) + " holds " +
                                 std::to_string(count) + " compressed bytes for " + std::to_string(decoded) +
                                 " decoded bytes; expected at most " + std::to_string(bound));
        }
    }
}

}  // namespace mrdl::imageio
