// The image-decoding rule (mrdl/decode.hpp) on hand-computed values: each element type, the
// rounding of floats, channel handling, and every refusal. The shared vectors compare it with
// Python's mrdl_runtime.imaging.to_rgb8 (test_shared_vectors) and read_image (test_png).
#include <cmath>
#include <limits>

#include "mrdl/decode.hpp"
#include "mrdl/errors.hpp"
#include "test_support.hpp"

using namespace mrdl;
using namespace mrdl::testing;

int main() {
    run("uint8: gray replicated, gray+alpha and RGBA lose alpha", [] {
        const uint8_t gray[] = {7, 200};
        check(to_rgb8(ImageView{gray, 1, 2, 1}).pixels == std::vector<uint8_t>{7, 7, 7, 200, 200, 200}, "gray");
        const uint8_t gray_alpha[] = {9, 0, 250, 255};
        check(to_rgb8(ImageView{gray_alpha, 1, 2, 2}).pixels == std::vector<uint8_t>{9, 9, 9, 250, 250, 250},
              "gray + alpha");
        const uint8_t rgba[] = {1, 2, 3, 0};
        check(to_rgb8(ImageView{rgba, 1, 1, 4}).pixels == std::vector<uint8_t>{1, 2, 3}, "RGBA");
        const uint8_t rgb[] = {4, 5, 6};
        check(to_rgb8(ImageView{rgb, 1, 1, 3}).pixels == std::vector<uint8_t>{4, 5, 6}, "RGB");
    });
    run("uint16 keeps the high byte", [] {
        const uint16_t values[] = {0x0000, 0x00ff, 0x0100, 0x12ab, 0xff00, 0xffff};
        const Image rgb = to_rgb8(values, 1, 6, 1);
        const std::vector<uint8_t> expected{0, 0, 1, 0x12, 0xff, 0xff};
        for (size_t i = 0; i < expected.size(); ++i) check(rgb.pixels[i * 3] == expected[i], "value " + std::to_string(i));
    });
    run("int32 in [0, 65535] is read as 16-bit; outside it is refused", [] {
        const int32_t values[] = {0, 256, 65535};
        const Image rgb = to_rgb8(PixelView{values, PixelType::Int32, 1, 3, 1});
        check(rgb.pixels == std::vector<uint8_t>{0, 0, 0, 1, 1, 1, 255, 255, 255}, "int32 values");
        const int32_t negative[] = {-1, 5}, large[] = {0, 65536};
        expect_error<InputError>("negative", "integer image values from -1 to 5; expected 8-bit (uint8) or 16-bit",
                                 [&] { to_rgb8(PixelView{negative, PixelType::Int32, 1, 2, 1}); });
        expect_error<InputError>("too large", "integer image values from 0 to 65536",
                                 [&] { to_rgb8(PixelView{large, PixelType::Int32, 1, 2, 1}); });
    });
    run("floats up to 1 become floor(v * 255 + 0.5), computed in double", [] {
        const float values[] = {0.0f, 0.5f, 1.0f, 0.25f, 0.001f, 0.998f};
        const Image rgb = to_rgb8(values, 1, 6, 1);
        const std::vector<uint8_t> expected{0, 128, 255, 64, 0, 254};
        for (size_t i = 0; i < expected.size(); ++i)
            check(rgb.pixels[i * 3] == expected[i], "value " + std::to_string(values[i]) + " -> " +
                                                        std::to_string(rgb.pixels[i * 3]));
        std::vector<float> levels(256);  // every uint8 level divided by 255 comes back exactly
        for (int k = 0; k < 256; ++k) levels[k] = static_cast<float>(k) / 255.0f;
        const Image back = to_rgb8(levels.data(), 1, 256, 1);
        for (int k = 0; k < 256; ++k) check(back.pixels[k * 3] == k, "level " + std::to_string(k));
    });
    run("floats up to 255 round half up: floor(v + 0.5)", [] {
        const double values[] = {0.5, 1.5, 2.5, 2.4999, 254.5, 255.0};
        const Image rgb = to_rgb8(values, 1, 6, 1);
        const std::vector<uint8_t> expected{1, 2, 3, 2, 255, 255};
        for (size_t i = 0; i < expected.size(); ++i) check(rgb.pixels[i * 3] == expected[i], "value " + std::to_string(i));
    });
    run("the float range is decided over every channel, alpha included", [] {
        const float rgba[] = {0.5f, 0.5f, 0.5f, 255.0f};  // alpha 255: the [0, 255] branch for the colours too
        check(to_rgb8(rgba, 1, 1, 4).pixels == std::vector<uint8_t>{1, 1, 1}, "RGBA with a 0..255 alpha");
    });
    run("float values outside the rule are refused", [] {
        const float nan[] = {0.5f, std::numeric_limits<float>::quiet_NaN()};
        const float inf[] = {std::numeric_limits<float>::infinity(), 0.0f};
        const float negative[] = {-0.5f, 0.5f};
        const float large[] = {300.0f, 0.5f};
        const float overshoot[] = {1.0001f, 0.5f};
        const std::string expected = "expected finite values in [0, 1] or [0, 255]";
        expect_error<InputError>("NaN", "float image holds NaN or infinite values; " + expected,
                                 [&] { to_rgb8(nan, 1, 2, 1); });
        expect_error<InputError>("inf", "float image holds NaN or infinite values", [&] { to_rgb8(inf, 1, 2, 1); });
        expect_error<InputError>("negative", "float image values down to -0.5; expected [0, 1] or [0, 255]",
                                 [&] { to_rgb8(negative, 1, 2, 1); });
        expect_error<InputError>("too large", "float image values up to 300; expected [0, 1] or [0, 255]",
                                 [&] { to_rgb8(large, 1, 2, 1); });
        expect_error<InputError>("just over 1", "float image values up to 1.0001: just over [0, 1], and read as "
                                 "[0, 255] the image would be black", [&] { to_rgb8(overshoot, 1, 2, 1); });
    });
    run("shapes and the pixel limit are checked first", [] {
        const uint8_t pixels[5 * 3 * 3] = {};
        expect_error<InputError>("5 channels", "image of shape (1, 1, 5): expected at least 1x1 pixels with 1 (gray), "
                                               "2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels",
                                 [&] { to_rgb8(ImageView{pixels, 1, 1, 5}); });
        expect_error<InputError>("0 channels", "image of shape (1, 1, 0)", [&] { to_rgb8(ImageView{pixels, 1, 1, 0}); });
        expect_error<InputError>("empty", "image of shape (3, 0, 3)", [&] { to_rgb8(ImageView{pixels, 3, 0, 3}); });
        expect_error<InputError>("over the limit",
                                 "image of 3x3 = 9 pixels exceeds the limit of 8 pixels; raise max_pixels",
                                 [&] { to_rgb8(ImageView{pixels, 3, 3, 3}, 8); });
        check(to_rgb8(ImageView{pixels, 3, 3, 3}, 9).pixels.size() == 27, "exactly at the limit is accepted");
        check_pixel_count(15811, 15811, kDefaultMaxPixels);
        expect_error<InputError>("default limit", "image of 20000x20000 = 400000000 pixels exceeds the limit of "
                                                  "250000000 pixels",
                                 [] { check_pixel_count(20000, 20000, kDefaultMaxPixels); });
    });
    return finish();
}
