// Image files of the example program: PNG or TIFF by signature.
#include "image_io.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>

#include "mrdl/errors.hpp"

namespace mrdl::image_io {

Image read_rgb(const std::string& path, size_t max_pixels) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw InputError("cannot open " + path + ": " + std::strerror(errno));
    char head[8] = {};
    file.read(head, sizeof(head));
    if (file.gcount() == 8 && std::memcmp(head, "\x89PNG\r\n\x1a\n", 8) == 0) return png::read_rgb(path, max_pixels);
    if (tiff::has_signature(path)) return tiff::read_rgb(path, max_pixels);
    throw InputError("cannot read " + path + ": neither a PNG nor a TIFF file (expected one of those formats)");
}

}  // namespace mrdl::image_io
