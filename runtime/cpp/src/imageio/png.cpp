// mrdl::imageio PNG input and output, through libpng; reading follows the decoding rule of mrdl/decode.hpp.
#include "mrdl/imageio.hpp"

#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <png.h>

#include "mrdl/decode.hpp"
#include "mrdl/errors.hpp"

namespace mrdl::imageio {

namespace {

/// libpng reports errors through this callback; it longjmps back to decode() with the message.
struct ErrorState {
    std::jmp_buf jump;
    char message[256] = "";
};

void on_error(png_structp png, png_const_charp message) {
    auto* state = static_cast<ErrorState*>(png_get_error_ptr(png));
    std::snprintf(state->message, sizeof(state->message), "%s", message);
    std::longjmp(state->jump, 1);
}

void on_warning(png_structp, png_const_charp) {}

struct Decoded {
    png_uint_32 height = 0, width = 0;
    int channels = 0;
    std::vector<uint8_t> pixels;  // (H, W, channels), 8-bit samples
    bool too_large = false;
};

/// Decode `file` into `out` with the transforms of the rule; returns libpng's message on failure.
/// Only plain data lives in this frame: libpng longjmps out of it on errors.
std::string decode(std::FILE* file, size_t max_pixels, Decoded& out) {
    ErrorState state;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &state, on_error, on_warning);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!png || !info) {
        png_destroy_read_struct(&png, nullptr, nullptr);
        return "out of memory";
    }
    png_bytep* volatile rows = nullptr;  // volatile: read after a longjmp
    if (setjmp(state.jump)) {
        std::free(rows);
        png_destroy_read_struct(&png, &info, nullptr);
        return state.message;
    }
    png_init_io(png, file);
    png_read_info(png, info);
    out.width = png_get_image_width(png, info);
    out.height = png_get_image_height(png, info);
    if (static_cast<uint64_t>(out.width) * out.height > max_pixels) {
        out.too_large = true;
        png_destroy_read_struct(&png, &info, nullptr);
        return "";
    }
    png_set_strip_16(png);                     // 16-bit: high byte
    png_set_palette_to_rgb(png);               // palette: its colours
    png_set_expand_gray_1_2_4_to_8(png);       // 1/2/4-bit gray: v * 255 / (2^bits - 1)
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    out.channels = png_get_channels(png, info);  // alpha (or tRNS expanded to alpha): to_rgb8 drops it
    const size_t row_bytes = png_get_rowbytes(png, info);
    rows = static_cast<png_bytep*>(std::malloc(sizeof(png_bytep) * out.height));
    bool allocated = rows != nullptr;
    try {
        out.pixels.resize(row_bytes * out.height);
    } catch (const std::bad_alloc&) {
        allocated = false;
    }
    if (!allocated) png_error(png, "out of memory for the pixels");  // after the catch: png_error longjmps
    for (png_uint_32 y = 0; y < out.height; ++y) rows[y] = out.pixels.data() + y * row_bytes;
    png_read_image(png, rows);
    png_read_end(png, nullptr);
    std::free(rows);
    png_destroy_read_struct(&png, &info, nullptr);
    return "";
}

/// The temporary file of an atomic write: `target` + ".tmp", renamed onto `target` by commit() and
/// removed when it goes out of scope uncommitted, whatever failed (the write, the rename, an exception).
class TemporaryFile {
public:
    explicit TemporaryFile(std::string target) : target_(std::move(target)), path_(target_ + ".tmp") {
        std::error_code error;
        if (std::filesystem::exists(path_, error) && !std::filesystem::is_regular_file(path_, error))
            throw InputError("cannot write " + target_ + ": its temporary file " + path_ +
                             " exists and is not a file; remove it");
    }
    TemporaryFile(const TemporaryFile&) = delete;
    TemporaryFile& operator=(const TemporaryFile&) = delete;
    ~TemporaryFile() {
        if (committed_) return;
        std::error_code ignored;
        std::filesystem::remove(path_, ignored);
    }

    const std::string& path() const { return path_; }

    void commit() {
        std::error_code error;
        std::filesystem::rename(path_, target_, error);
        if (error) {
            std::error_code ignored;
            const bool folder = std::filesystem::is_directory(target_, ignored);
            throw InputError("cannot write " + target_ + ": " +
                             (folder ? "it is a directory; give the path of a file" : error.message()));
        }
        committed_ = true;
    }

private:
    std::string target_;
    std::string path_;
    bool committed_ = false;
};

}  // namespace

Image read_png(const std::string& path, size_t max_pixels) {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), std::fclose);
    if (!file) throw InputError("cannot open " + path + ": " + std::strerror(errno));
    png_byte signature[8] = {};
    if (std::fread(signature, 1, sizeof(signature), file.get()) != sizeof(signature) ||
        png_sig_cmp(signature, 0, sizeof(signature)) != 0)
        throw InputError("cannot read " + path + " as a PNG image: no PNG signature");
    std::rewind(file.get());
    Decoded decoded;
    const std::string failure = decode(file.get(), max_pixels, decoded);
    if (decoded.too_large) check_pixel_count(decoded.height, decoded.width, max_pixels);
    if (!failure.empty()) throw InputError("cannot decode " + path + " as a PNG image: " + failure);
    const int height = static_cast<int>(decoded.height), width = static_cast<int>(decoded.width);
    if (decoded.channels == 3) return Image{height, width, 3, std::move(decoded.pixels)};  // RGB already: no copy
    return to_rgb8(ImageView{decoded.pixels.data(), height, width, decoded.channels}, max_pixels);
}

void write_png(const std::string& path, const ImageView& image) {
    if (image.channels != 1 && image.channels != 3)
        throw InputError("PNG output expects 1 or 3 channels, got " + std::to_string(image.channels));
    png_image info{};
    info.version = PNG_IMAGE_VERSION;
    info.width = static_cast<png_uint_32>(image.width);
    info.height = static_cast<png_uint_32>(image.height);
    info.format = image.channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    TemporaryFile temporary(path);
    if (!png_image_write_to_file(&info, temporary.path().c_str(), 0, image.data, 0, nullptr))
        throw InputError("cannot write " + path + ": " + info.message);
    temporary.commit();
}

}  // namespace mrdl::imageio
