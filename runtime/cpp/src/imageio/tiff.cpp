// mrdl::imageio TIFF input: libtiff decodes each strip or tile (decompression, predictor, byte
// order, fill order); this file places the samples and applies the decoding rule.
#include "mrdl/imageio.hpp"

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>
#include <vector>

#include <tiffio.h>

#include "mrdl/decode.hpp"
#include "mrdl/errors.hpp"
#include "tiff_bounds.hpp"

namespace mrdl::imageio {
namespace {

constexpr uint64_t kMaxChunkBytes = uint64_t(1) << 30;  // one decoded strip or tile, at most 1 GiB

/// libtiff's first error message for this file (warnings are ignored).
struct Messages {
    std::string error;
};

int on_error(TIFF*, void* user, const char* module, const char* format, va_list args) {
    auto* messages = static_cast<Messages*>(user);
    if (messages->error.empty()) {
        char text[512];
        std::vsnprintf(text, sizeof(text), format, args);
        messages->error = std::string(module ? module : "libtiff") + ": " + text;
    }
    return 1;  // handled: nothing goes to stderr
}

int on_warning(TIFF*, void*, const char*, const char*, va_list) { return 1; }

using File = std::unique_ptr<TIFF, void (*)(TIFF*)>;

File open(const std::string& path, Messages& messages) {
    TIFFOpenOptions* options = TIFFOpenOptionsAlloc();
    if (options == nullptr) throw InputError("cannot read " + path + ": out of memory");
    TIFFOpenOptionsSetErrorHandlerExtR(options, on_error, &messages);
    TIFFOpenOptionsSetWarningHandlerExtR(options, on_warning, &messages);
    TIFF* tif = TIFFOpenExt(path.c_str(), "rc", options);
    TIFFOpenOptionsFree(options);
    return File(tif, TIFFClose);
}

std::string photometric_name(uint16_t photometric) {
    switch (photometric) {
        case PHOTOMETRIC_SEPARATED: return "CMYK (separated)";
        case PHOTOMETRIC_YCBCR: return "YCbCr (other than JPEG-compressed)";
        case PHOTOMETRIC_CIELAB: return "CIELab";
        case PHOTOMETRIC_MASK: return "transparency mask";
        default: return "code " + std::to_string(photometric);
    }
}

/// What the header says, checked against what this reader supports.
struct Layout {
    uint32_t width = 0, height = 0;
    uint16_t samples = 1, bits = 1, format = SAMPLEFORMAT_UINT, photometric = 0, planar = PLANARCONFIG_CONTIG;
    int color = 1;          // 1 (gray, palette) or 3 (RGB) colour samples
    bool alpha = false;     // the sample after them is unassociated alpha (kept for the value rule)
    int kept() const { return color + (alpha ? 1 : 0); }
    int planes() const { return planar == PLANARCONFIG_SEPARATE ? samples : 1; }
    int per_chunk_pixel() const { return planar == PLANARCONFIG_SEPARATE ? 1 : samples; }  // samples per pixel in a chunk
};

Layout read_layout(TIFF* tif, const std::string& path, size_t max_pixels, Messages& messages) {
    Layout l;
    TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &l.width);
    TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &l.height);
    check_pixel_count(l.height, l.width, max_pixels);
    if (l.width == 0 || l.height == 0) throw InputError(path + ": TIFF image of 0 pixels");
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &l.samples);
    TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &l.bits);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLEFORMAT, &l.format);
    TIFFGetFieldDefaulted(tif, TIFFTAG_PLANARCONFIG, &l.planar);
    if (!TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &l.photometric))
        throw InputError(path + ": TIFF without a PhotometricInterpretation tag; expected gray, RGB or palette");
    const std::string expected = "; the C++ reader takes gray, RGB or palette TIFFs (convert the file, e.g. to RGB)";
    uint16_t compression = COMPRESSION_NONE;
    TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &compression);
    if (l.photometric == PHOTOMETRIC_YCBCR && compression == COMPRESSION_JPEG) {
        // JPEG-compressed YCbCr (whole-slide images): libjpeg converts to RGB and upsamples the
        // chroma, as Pillow has libtiff do; from here on the file reads as 8-bit RGB.
        if (!TIFFSetField(tif, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB))
            throw InputError(path + ": cannot decode JPEG YCbCr as RGB: " + messages.error);
        l.photometric = PHOTOMETRIC_RGB;
    }
    switch (l.photometric) {
        case PHOTOMETRIC_MINISBLACK:
        case PHOTOMETRIC_MINISWHITE:
        case PHOTOMETRIC_PALETTE: l.color = 1; break;
        case PHOTOMETRIC_RGB: l.color = 3; break;
        default: throw InputError(path + ": TIFF photometric interpretation " + photometric_name(l.photometric) + expected);
    }
    if (l.samples < l.color)
        throw InputError(path + ": TIFF with " + std::to_string(l.samples) + " samples per pixel for " +
                         std::to_string(l.color) + " colour channels");
    uint16_t extra_count = 0;
    uint16_t* extra = nullptr;
    TIFFGetFieldDefaulted(tif, TIFFTAG_EXTRASAMPLES, &extra_count, &extra);
    if (l.photometric == PHOTOMETRIC_PALETTE) {
        l.alpha = false;  // palette + alpha: the colours only
    } else if (l.samples > l.color && extra_count > 0 && extra != nullptr) {
        if (extra[0] == EXTRASAMPLE_ASSOCALPHA)
            throw InputError(path + ": TIFF with associated (premultiplied) alpha; the C++ reader takes "
                                    "unassociated alpha only (save the image without alpha or with plain alpha)");
        l.alpha = extra[0] == EXTRASAMPLE_UNASSALPHA;
    } else if (l.samples > l.color && l.photometric == PHOTOMETRIC_RGB && l.samples == 4) {
        l.alpha = true;  // RGBA without an ExtraSamples tag: alpha, as Pillow reads it
    }
    const bool integer = l.format == SAMPLEFORMAT_UINT || l.format == SAMPLEFORMAT_INT;
    const bool supported =
        (l.format == SAMPLEFORMAT_UINT && (l.bits == 1 || l.bits == 2 || l.bits == 4 || l.bits == 8 || l.bits == 16 ||
                                           l.bits == 32)) ||
        (l.format == SAMPLEFORMAT_INT && (l.bits == 16 || l.bits == 32)) ||
        (l.format == SAMPLEFORMAT_IEEEFP && (l.bits == 32 || l.bits == 64));
    if (!supported)
        throw InputError(path + ": TIFF with " + std::to_string(l.bits) + "-bit " +
                         (l.format == SAMPLEFORMAT_IEEEFP ? "float" : integer ? (l.format == SAMPLEFORMAT_INT ? "signed" : "unsigned") : "sample format " + std::to_string(l.format)) +
                         " samples; expected unsigned 1/2/4/8/16/32-bit, signed 16/32-bit or 32/64-bit float");
    if (l.photometric == PHOTOMETRIC_PALETTE && (l.format != SAMPLEFORMAT_UINT || l.bits > 8))
        throw InputError(path + ": palette TIFF with " + std::to_string(l.bits) + "-bit indices; expected 1 to 8 bits");
    if (l.photometric == PHOTOMETRIC_MINISWHITE && !(l.format == SAMPLEFORMAT_UINT && l.bits <= 8))
        throw InputError(path + ": min-is-white TIFF with " + std::to_string(l.bits) +
                         "-bit samples; the C++ reader inverts 1- to 8-bit min-is-white only (Pillow leaves "
                         "deeper ones uninverted); save it as min-is-black");
    if (l.bits < 8 && l.samples != 1)
        throw InputError(path + ": TIFF with " + std::to_string(l.samples) + " samples of " + std::to_string(l.bits) +
                         " bits; expected 1 sample per pixel below 8 bits");
    return l;
}

/// One sample of a decoded chunk, as an unsigned value (bits <= 16) read in native byte order.
uint32_t sample_at(const uint8_t* row, size_t index, int bits) {
    switch (bits) {
        case 8: return row[index];
        case 16: {
            uint16_t v;
            std::memcpy(&v, row + index * 2, 2);
            return v;
        }
        default: {  // 1, 2, 4 bits, most significant first (libtiff has applied the fill order)
            const size_t bit = index * bits;
            return (row[bit / 8] >> (8 - bits - bit % 8)) & ((1u << bits) - 1);
        }
    }
}

/// Pixels as T, (H, W, layout.kept()), filled chunk by chunk (strips or tiles, each plane).
template <typename T>
std::vector<T> read_samples(TIFF* tif, const Layout& l, const std::string& path, Messages& messages,
                            T (*convert)(const uint8_t* row, size_t index, int bits)) {
    const int kept = l.kept();
    std::vector<T> out(static_cast<size_t>(l.width) * l.height * kept);
    const bool tiled = TIFFIsTiled(tif);
    uint32_t chunk_width = l.width, chunk_height = 0;
    if (tiled) {
        TIFFGetField(tif, TIFFTAG_TILEWIDTH, &chunk_width);
        TIFFGetField(tif, TIFFTAG_TILELENGTH, &chunk_height);
    } else {
        TIFFGetFieldDefaulted(tif, TIFFTAG_ROWSPERSTRIP, &chunk_height);
        chunk_height = std::min(chunk_height, l.height);
    }
    if (chunk_width == 0 || chunk_height == 0) throw InputError(path + ": TIFF with empty tiles or strips");
    const tmsize_t chunk_bytes = tiled ? TIFFTileSize(tif) : TIFFStripSize(tif);
    if (chunk_bytes <= 0) throw InputError(path + ": cannot decode this TIFF: " + messages.error);
    if (static_cast<uint64_t>(chunk_bytes) > kMaxChunkBytes)  // a hostile header must not allocate gigabytes
        throw InputError(path + ": TIFF " + (tiled ? "tiles" : "strips") + " of " + std::to_string(chunk_bytes) +
                         " bytes; the reader takes at most " + std::to_string(kMaxChunkBytes) + " bytes per tile or strip");
    const size_t row_bytes = (static_cast<size_t>(chunk_width) * l.per_chunk_pixel() * l.bits + 7) / 8;
    uint16_t compression = COMPRESSION_NONE;
    TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &compression);
    // Before any strip or tile is read; an uncompressed one is then read for the bytes its rows need
    // (libtiff reads at most chunk_bytes of it), so repeated or overlapping chunks cost no more.
    check_chunk_bytes(path, ChunkGeometry{tiled, l.width, l.height, chunk_width, chunk_height, row_bytes,
                                          l.planes() > 1 ? l.kept() : 1, compression != COMPRESSION_NONE});
    std::vector<uint8_t> buffer(static_cast<size_t>(chunk_bytes));
    for (int plane = 0; plane < l.planes(); ++plane) {
        if (l.planes() > 1 && plane >= kept) break;  // separate planes after the kept ones: not needed
        for (uint32_t y0 = 0; y0 < l.height; y0 += chunk_height)
            for (uint32_t x0 = 0; x0 < l.width; x0 += chunk_width) {
                const tmsize_t got =
                    tiled ? TIFFReadEncodedTile(tif, TIFFComputeTile(tif, x0, y0, 0, plane), buffer.data(), chunk_bytes)
                          : TIFFReadEncodedStrip(tif, TIFFComputeStrip(tif, y0, plane), buffer.data(), chunk_bytes);
                const uint32_t rows = std::min(chunk_height, l.height - y0);
                const uint32_t cols = std::min(chunk_width, l.width - x0);
                if (got < 0 || static_cast<size_t>(got) < (rows - 1) * row_bytes + (cols * l.per_chunk_pixel() * l.bits + 7) / 8)
                    throw InputError("cannot decode " + path + " as a TIFF image: " +
                                     (messages.error.empty() ? "a strip or tile is truncated" : messages.error));
                for (uint32_t r = 0; r < rows; ++r) {
                    const uint8_t* row = buffer.data() + r * row_bytes;
                    T* dst = &out[((static_cast<size_t>(y0) + r) * l.width + x0) * kept];
                    for (uint32_t c = 0; c < cols; ++c) {
                        if (l.planes() > 1) {
                            dst[c * kept + plane] = convert(row, c, l.bits);
                        } else {
                            for (int s = 0; s < kept; ++s) dst[c * kept + s] = convert(row, c * l.samples + s, l.bits);
                        }
                    }
                }
            }
    }
    return out;
}

template <typename T>
T typed_at(const uint8_t* row, size_t index, int) {
    T value;
    std::memcpy(&value, row + index * sizeof(T), sizeof(T));
    return value;
}

/// The pixels as stored (the Orientation tag not applied), HxWx3 RGB by the decoding rule.
Image read_stored(TIFF* tif, const std::string& path, size_t max_pixels, Messages& messages) {
    const Layout l = read_layout(tif, path, max_pixels, messages);
    const int h = static_cast<int>(l.height), w = static_cast<int>(l.width), kept = l.kept();

    if (l.format == SAMPLEFORMAT_IEEEFP) {
        if (l.bits == 32) {
            const auto values = read_samples<float>(tif, l, path, messages, typed_at<float>);
            return to_rgb8(PixelView{values.data(), PixelType::Float32, h, w, kept}, max_pixels);
        }
        const auto values = read_samples<double>(tif, l, path, messages, typed_at<double>);
        return to_rgb8(PixelView{values.data(), PixelType::Float64, h, w, kept}, max_pixels);
    }
    if (l.bits == 32 || l.format == SAMPLEFORMAT_INT) {  // through int32: the rule checks [0, 65535]
        std::vector<int32_t> values;
        if (l.bits == 16) {
            const auto raw = read_samples<int16_t>(tif, l, path, messages, typed_at<int16_t>);
            values.assign(raw.begin(), raw.end());
        } else if (l.format == SAMPLEFORMAT_INT) {
            values = read_samples<int32_t>(tif, l, path, messages, typed_at<int32_t>);
        } else {
            const auto raw = read_samples<uint32_t>(tif, l, path, messages, typed_at<uint32_t>);
            for (uint32_t v : raw)
                if (v > 65535)
                    throw InputError(path + ": integer image values up to " + std::to_string(v) +
                                     "; expected 8-bit (uint8) or 16-bit values in [0, 65535]");
            values.assign(raw.begin(), raw.end());
        }
        return to_rgb8(PixelView{values.data(), PixelType::Int32, h, w, kept}, max_pixels);
    }
    if (l.bits == 16) {
        const auto values = read_samples<uint16_t>(tif, l, path, messages,
                                                   [](const uint8_t* row, size_t i, int bits) {
                                                       return static_cast<uint16_t>(sample_at(row, i, bits));
                                                   });
        return to_rgb8(PixelView{values.data(), PixelType::UInt16, h, w, kept}, max_pixels);
    }
    std::vector<uint8_t> values = read_samples<uint8_t>(tif, l, path, messages,
                                                        [](const uint8_t* row, size_t i, int bits) {
                                                            return static_cast<uint8_t>(sample_at(row, i, bits));
                                                        });
    const unsigned top = (1u << l.bits) - 1;
    if (l.photometric == PHOTOMETRIC_PALETTE) {
        uint16_t *red = nullptr, *green = nullptr, *blue = nullptr;
        if (!TIFFGetField(tif, TIFFTAG_COLORMAP, &red, &green, &blue))
            throw InputError(path + ": palette TIFF without a ColorMap");
        std::vector<uint8_t> rgb(values.size() * 3);
        for (size_t p = 0; p < values.size(); ++p) {  // entries are 16-bit: the high byte, as Pillow
            rgb[p * 3] = static_cast<uint8_t>(red[values[p]] >> 8);
            rgb[p * 3 + 1] = static_cast<uint8_t>(green[values[p]] >> 8);
            rgb[p * 3 + 2] = static_cast<uint8_t>(blue[values[p]] >> 8);
        }
        return to_rgb8(ImageView{rgb.data(), h, w, 3}, max_pixels);
    }
    if (l.photometric == PHOTOMETRIC_MINISWHITE)
        for (size_t p = 0; p < values.size(); ++p)
            if (p % kept < static_cast<size_t>(l.color)) values[p] = static_cast<uint8_t>(top - values[p]);
    if (l.bits < 8)
        for (uint8_t& v : values) v = static_cast<uint8_t>(v * 255u / top);
    if (kept == 3) return Image{h, w, 3, std::move(values)};  // already RGB uint8: no copy
    return to_rgb8(ImageView{values.data(), h, w, kept}, max_pixels);
}

/// Pixels as stored -> as displayed by the Orientation tag, as Pillow applies it on loading a TIFF
/// (ImageOps.exif_transpose) and runtime/tiff.py's `oriented`: 2 mirrors left-right, 3 turns by
/// 180 degrees, 4 mirrors top-bottom, 5 transposes, 6 turns 90 degrees clockwise, 7 transverses,
/// 8 turns 90 degrees counter-clockwise (5 to 8 give a WxH image). Any other value leaves the
/// pixels as stored, as in Python. Out pixel (y, x) is stored pixel (y, x) or, transposed, (x, y),
/// with the stored row and / or column counted from the other end.
Image oriented(Image stored, uint16_t orientation) {
    if (orientation < 2 || orientation > 8) return stored;
    const bool transposed = orientation >= 5;
    const bool rows_reversed = orientation == 3 || orientation == 4 || orientation == 6 || orientation == 7;
    const bool columns_reversed = orientation == 2 || orientation == 3 || orientation == 7 || orientation == 8;
    const size_t h = stored.height, w = stored.width, c = stored.channels, row = w * c;
    if (!transposed) {  // in place: rows swapped end for end, pixels swapped within each row
        uint8_t* p = stored.pixels.data();
        if (rows_reversed)
            for (size_t y = 0; y < h / 2; ++y) std::swap_ranges(p + y * row, p + (y + 1) * row, p + (h - 1 - y) * row);
        if (columns_reversed)
            for (size_t y = 0; y < h; ++y)
                for (size_t x = 0; x < w / 2; ++x) std::swap_ranges(p + y * row + x * c, p + y * row + (x + 1) * c,
                                                                   p + y * row + (w - 1 - x) * c);
        return stored;
    }
    Image out{stored.width, stored.height, stored.channels, std::vector<uint8_t>(stored.pixels.size())};
    constexpr size_t kBlock = 64;  // block by block: both images are read and written a cache line at a time
    for (size_t y0 = 0; y0 < w; y0 += kBlock)      // out rows = stored columns
        for (size_t x0 = 0; x0 < h; x0 += kBlock)  // out columns = stored rows
            for (size_t y = y0; y < std::min(y0 + kBlock, w); ++y) {
                const size_t sx = columns_reversed ? w - 1 - y : y;
                uint8_t* dst = out.pixels.data() + (y * h + x0) * c;
                for (size_t x = x0; x < std::min(x0 + kBlock, h); ++x, dst += c) {
                    const size_t sy = rows_reversed ? h - 1 - x : x;
                    std::memcpy(dst, stored.pixels.data() + sy * row + sx * c, c);
                }
            }
    return out;
}

}  // namespace

bool is_tiff(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    char head[4] = {};
    if (!file.read(head, 4)) return false;
    const std::string magic(head, 4);
    return magic == std::string("II*\0", 4) || magic == std::string("MM\0*", 4) || magic == std::string("II+\0", 4) ||
           magic == std::string("MM\0+", 4);
}

Image read_tiff(const std::string& path, size_t max_pixels) {
    if (!std::ifstream(path, std::ios::binary)) throw InputError("cannot open " + path + ": " + std::strerror(errno));
    if (!is_tiff(path)) throw InputError("cannot read " + path + " as a TIFF image: no TIFF signature");
    Messages messages;
    File tif = open(path, messages);
    if (!tif) throw InputError("cannot read " + path + " as a TIFF image: " + messages.error);
    // An Orientation outside 1..8 is not set by libtiff (it reports "Bad value ... for "Orientation"
    // tag" and reads the default, 1, as Pillow ignores it): not an error of this file.
    if (messages.error.find("\"Orientation\" tag") != std::string::npos) messages.error.clear();
    uint16_t orientation = ORIENTATION_TOPLEFT;
    TIFFGetFieldDefaulted(tif.get(), TIFFTAG_ORIENTATION, &orientation);
    return oriented(read_stored(tif.get(), path, max_pixels, messages), orientation);
}

}  // namespace mrdl::imageio
