// mrdl::imageio::read_image: PNG or TIFF, told apart by their signature.
#include "mrdl/imageio.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>

#include "mrdl/errors.hpp"

namespace mrdl::imageio {

Image read_image(const std::string& path, size_t max_pixels) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw InputError("cannot open " + path + ": " + std::strerror(errno));
    char head[8] = {};
    file.read(head, sizeof(head));
    if (file.gcount() == 8 && std::memcmp(head, "\x89PNG\r\n\x1a\n", 8) == 0) return read_png(path, max_pixels);
    if (is_tiff(path)) return read_tiff(path, max_pixels);
    throw InputError("cannot read " + path + ": neither a PNG nor a TIFF file (expected one of those formats)");
}

}  // namespace mrdl::imageio
