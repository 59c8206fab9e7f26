// mrdl_consumer MODEL_DIR IMAGE MASK.png: read a PNG or TIFF with the installed mrdl::imageio, segment
// it with the installed mrdl::runtime and write the mask as an 8-bit gray PNG (0/255 for a one-class
// model, the class index otherwise), as mrdl_segment does with its default options.
#include <cstdint>
#include <iostream>
#include <vector>

#include <mrdl/imageio.hpp>
#include <mrdl/segmenter.hpp>

int main(int argc, char** argv) {
    if (argc != 4) {
        std::cerr << "usage: mrdl_consumer MODEL_DIR IMAGE MASK.png\n";
        return 2;
    }
    try {
        const mrdl::Segmenter segmenter(argv[1]);
        const mrdl::Image image = mrdl::imageio::read_image(argv[2]);
        const mrdl::Segmentation result = segmenter.segment(image.view());
        std::vector<uint8_t> mask = result.mask;  // (H, W)
        if (result.n_classes == 1)
            for (uint8_t& value : mask) value = value ? 255 : 0;
        mrdl::imageio::write_png(argv[3], mrdl::ImageView{mask.data(), result.height, result.width, 1});
        std::cout << "mrdl_consumer: " << segmenter.backend_description() << ", mask " << result.height << "x"
                  << result.width << "\n";
    } catch (const mrdl::Error& e) {  // caught by type across the shared-library boundary
        std::cerr << "mrdl_consumer: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
