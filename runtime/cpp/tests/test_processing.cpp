// Pre- and postprocessing equal the Python runtime's on the vectors of make_test_data.py.
//   test_processing TEST_DATA_DIR
#include <algorithm>
#include <array>

#include "mrdl/processing.hpp"
#include "mrdl/resample.hpp"
#include "test_support.hpp"

using namespace mrdl;
using namespace mrdl::testing;

namespace {

// Where the Python runtime runs on a Pillow older than 13, which always resizes horizontal first,
// the shapes that Pillow 13 (and the C++ whole-image path, PassOrder::Pillow) resizes vertical first
// (python-pillow/Pillow#9549) differ by at most one level of the intermediate uint8 image. The
// deploy contract allows that; with Pillow 13 both are exact.
constexpr float kOneLevel = 1.0f / 255.0f + 1e-7f;
constexpr float kFloatTolerance = 1e-6f;

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: test_processing TEST_DATA_DIR\n";
        return 2;
    }
    const std::string dir = argv[1];
    const nlohmann::json index = read_index(dir);

    for (const auto& c : index.at("preprocess")) {
        run("preprocess " + c.at("name").get<std::string>(), [&] {
            const std::vector<uint8_t> pixels = read_array<uint8_t>(dir + "/" + c.at("image").get<std::string>());
            const std::vector<float> expected = read_array<float>(dir + "/" + c.at("expected").get<std::string>());
            Preprocessing spec;
            spec.height = c.at("size")[0];
            spec.width = c.at("size")[1];
            spec.scale = c.at("scale");
            const ImageView view{pixels.data(), c.at("shape")[0], c.at("shape")[1], c.at("shape")[2]};
            const std::vector<float> tensor = preprocess(view, spec);
            check(tensor.size() == expected.size(), "tensor size");
            size_t differing = 0;
            for (size_t i = 0; i < std::min(tensor.size(), expected.size()); ++i) differing += tensor[i] != expected[i];
            const float diff = max_abs_diff(tensor, expected);
            check(diff <= kOneLevel, "max |diff| " + std::to_string(diff * 255) + " uint8 levels (allowed: 1)");
            std::cout << "     " << differing << " of " << expected.size() << " values differ by one level\n";
        });
    }

    for (const auto& c : index.at("postprocess")) {
        run("postprocess " + c.at("name").get<std::string>(), [&] {
            const std::vector<float> probs = read_array<float>(dir + "/" + c.at("probabilities").get<std::string>());
            const std::vector<float> expected =
                read_array<float>(dir + "/" + c.at("expected_probabilities").get<std::string>());
            const std::vector<uint8_t> mask = read_array<uint8_t>(dir + "/" + c.at("expected_mask").get<std::string>());
            Postprocessing spec;
            spec.threshold = c.at("threshold");
            const Segmentation result = postprocess(probs.data(), c.at("n_classes"), c.at("model_size")[0],
                                                    c.at("model_size")[1], c.at("size")[0], c.at("size")[1], spec);
            const float diff = max_abs_diff(result.probabilities, expected);
            check(diff <= kFloatTolerance, "probabilities differ from Pillow mode F by " + std::to_string(diff));
            const size_t plane = mask.size();
            for (size_t p = 0; p < plane && p < result.mask.size(); ++p)
                if (result.mask[p] != mask[p]) {
                    // only a pixel whose probabilities tie within the tolerance may flip
                    float margin = INFINITY;
                    if (c.at("n_classes") == 1) margin = std::fabs(expected[p] - spec.threshold);
                    else margin = std::fabs(expected[result.mask[p] * plane + p] - expected[mask[p] * plane + p]);
                    check(margin <= 2 * kFloatTolerance, "mask differs at pixel " + std::to_string(p));
                }
            const int k = c.at("n_classes"), mh = c.at("model_size")[0], mw = c.at("model_size")[1];
            const int h = c.at("size")[0], w = c.at("size")[1];
            check(mask_at_size(probs.data(), k, mh, mw, h, w, spec) == result.mask,
                  "mask_at_size (strips) differs from postprocess's mask");
            for (int begin = 0; begin < h; begin += 7) {  // any strip: the rows of the whole resize, bit for bit
                const int end = std::min(h, begin + 7);
                const std::vector<float> rows =
                    resize_bilinear_rows(probs.data(), mh, mw, h, w, begin, end, PassOrder::Pillow);
                const std::vector<float> whole(result.probabilities.begin() + static_cast<size_t>(begin) * w,
                                               result.probabilities.begin() + static_cast<size_t>(end) * w);
                check(rows == whole, "resize_bilinear_rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                                         ") differs from the whole resize");
            }
        });
    }

    run("resize_bilinear_rows: any strip of either order is those rows of the whole resize", [] {
        std::vector<float> plane(64 * 64);  // a ramp with a ripple: every pass rounds to float32
        for (size_t i = 0; i < plane.size(); ++i) plane[i] = static_cast<float>(i % 64) / 63.0f + 0.01f * (i % 7);
        for (const std::array<int, 2> size : {std::array<int, 2>{37, 53}, {70, 50}, {50, 70}, {64, 41}, {20, 64}})
            for (const PassOrder order : {PassOrder::HorizontalFirst, PassOrder::VerticalFirst, PassOrder::Pillow}) {
                const std::vector<float> whole = resize_bilinear(plane.data(), 64, 64, size[0], size[1], order);
                for (int begin = 0; begin < size[0]; begin += 5) {
                    const int end = std::min(size[0], begin + 5);
                    const std::vector<float> rows =
                        resize_bilinear_rows(plane.data(), 64, 64, size[0], size[1], begin, end, order);
                    check(rows == std::vector<float>(whole.begin() + static_cast<size_t>(begin) * size[1],
                                                     whole.begin() + static_cast<size_t>(end) * size[1]),
                          "rows [" + std::to_string(begin) + ", " + std::to_string(end) + ") of 64x64 -> " +
                              std::to_string(size[0]) + "x" + std::to_string(size[1]));
                }
            }
        const std::vector<float> horizontal = resize_bilinear(plane.data(), 64, 64, 37, 53, PassOrder::HorizontalFirst);
        const std::vector<float> vertical = resize_bilinear(plane.data(), 64, 64, 37, 53, PassOrder::VerticalFirst);
        check(horizontal != vertical, "the two orders differ on 64x64 -> 37x53 (the test above tells them apart)");
    });
    run("identity resize returns the input", [] {
        const std::vector<uint8_t> pixels{1, 2, 3, 4, 5, 6};
        const Image out = resize_bilinear(ImageView{pixels.data(), 1, 2, 3}, 1, 2);
        check(out.pixels == pixels, "identity");
    });
    return finish();
}
