#include "png_io.hpp"

#include <cstdio>
#include <filesystem>

#include <png.h>

#include "mrdl/errors.hpp"

namespace mrdl::png {

Image read_rgb(const std::string& path) {
    png_image info{};
    info.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&info, path.c_str()))
        throw InputError("cannot read " + path + " as a PNG image: " + info.message);
    info.format = PNG_FORMAT_RGB;
    Image image{static_cast<int>(info.height), static_cast<int>(info.width), 3, {}};
    image.pixels.resize(PNG_IMAGE_SIZE(info));
    if (!png_image_finish_read(&info, nullptr, image.pixels.data(), 0, nullptr)) {
        png_image_free(&info);
        throw InputError("cannot decode " + path + ": " + info.message);
    }
    return image;
}

void write(const std::string& path, const ImageView& image) {
    if (image.channels != 1 && image.channels != 3)
        throw InputError("PNG output expects 1 or 3 channels, got " + std::to_string(image.channels));
    png_image info{};
    info.version = PNG_IMAGE_VERSION;
    info.width = static_cast<png_uint_32>(image.width);
    info.height = static_cast<png_uint_32>(image.height);
    info.format = image.channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    const std::string temporary = path + ".tmp";
    if (!png_image_write_to_file(&info, temporary.c_str(), 0, image.data, 0, nullptr)) {
        std::remove(temporary.c_str());
        throw InputError("cannot write " + path + ": " + info.message);
    }
    std::filesystem::rename(temporary, path);
}

}  // namespace mrdl::png
