// mrdl_consumer MODEL_DIR: load an exported model through the installed mrdl::runtime and segment
// one synthetic image; exits 0 when the mask has the image's size.
#include <cstdint>
#include <iostream>
#include <vector>

#include <mrdl/segmenter.hpp>

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: mrdl_consumer MODEL_DIR\n";
        return 2;
    }
    try {
        mrdl::Segmenter segmenter(argv[1]);
        const int height = 37, width = 53;
        std::vector<uint8_t> pixels(static_cast<size_t>(height) * width * 3);
        for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>((i * 7) % 256);
        const mrdl::Segmentation result = segmenter.segment(mrdl::ImageView{pixels.data(), height, width, 3});
        if (result.mask.size() != static_cast<size_t>(height) * width) {
            std::cerr << "mrdl_consumer: mask has " << result.mask.size() << " pixels, expected "
                      << height * width << "\n";
            return 1;
        }
        std::cout << "mrdl_consumer: " << segmenter.backend_description() << ", mask " << height << "x" << width
                  << "\n";
    } catch (const mrdl::Error& e) {  // caught by type across the shared-library boundary
        std::cerr << "mrdl_consumer: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
