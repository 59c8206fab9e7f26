// One Segmenter shared by 8 threads gives exactly the results of serial calls (mrdl/segmenter.hpp,
// "Threads"): whole images, a batch and a tiled image, each thread running every case in its own order.
//   test_threads TEST_DATA_DIR
#include <atomic>
#include <thread>

#include "mrdl/segmenter.hpp"
#include "test_support.hpp"

using namespace mrdl;
using namespace mrdl::testing;

namespace {

constexpr int kThreads = 8;
constexpr int kRounds = 3;

struct Input {
    std::string name;
    std::vector<uint8_t> pixels;
    ImageView view;
    TileOptions tiling;
};

bool same(const Segmentation& a, const Segmentation& b) {
    return a.mask == b.mask && a.probabilities == b.probabilities && a.tiled == b.tiled;  // bit for bit
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: test_threads TEST_DATA_DIR\n";
        return 2;
    }
    const std::string dir = argv[1];
    const nlohmann::json segment = read_index(dir).at("segment");
    std::vector<Input> inputs;
    const auto add = [&](const nlohmann::json& c, TileMode mode) {
        Input input{c.at("name"), read_array<uint8_t>(dir + "/" + c.at("image").get<std::string>()), {}, {}};
        input.view = ImageView{input.pixels.data(), c.at("shape")[0], c.at("shape")[1], c.at("shape")[2]};
        input.tiling.mode = mode;
        inputs.push_back(std::move(input));
    };
    for (const auto& c : segment.at("cases")) add(c, TileMode::Off);
    add(segment.at("tiled_cases").at(0), TileMode::On);

    SegmenterOptions options;
    options.intra_op_threads = 1;  // each call on its calling thread: 8 callers, no oversubscription
    const Segmenter segmenter(dir + "/" + segment.at("model_dir").get<std::string>(), options);
    std::vector<Segmentation> serial;
    for (const Input& input : inputs) serial.push_back(segmenter.segment(input.view, {}, input.tiling));
    std::vector<ImageView> batch_views;
    for (size_t i = 0; i + 1 < inputs.size(); ++i) batch_views.push_back(inputs[i].view);
    const std::vector<Segmentation> serial_batch = segmenter.segment(batch_views, {}, TileOptions{TileMode::Off});

    run(std::to_string(kThreads) + " threads share one Segmenter", [&] {
        std::atomic<int> mismatches{0}, errors{0}, calls{0};
        std::vector<std::thread> threads;
        for (int t = 0; t < kThreads; ++t)
            threads.emplace_back([&, t] {
                try {
                    for (int round = 0; round < kRounds; ++round) {
                        for (size_t k = 0; k < inputs.size(); ++k) {
                            const size_t i = (k + t) % inputs.size();  // every thread in another order
                            if (!same(segmenter.segment(inputs[i].view, {}, inputs[i].tiling), serial[i])) ++mismatches;
                            ++calls;
                        }
                        const std::vector<Segmentation> batch =
                            segmenter.segment(batch_views, {}, TileOptions{TileMode::Off});
                        for (size_t i = 0; i < batch.size(); ++i) mismatches += !same(batch[i], serial_batch[i]);
                        ++calls;
                    }
                } catch (const std::exception& error) {
                    std::cerr << "thread " << t << ": " << error.what() << "\n";
                    ++errors;
                }
            });
        for (std::thread& thread : threads) thread.join();
        check(errors == 0, std::to_string(errors.load()) + " threads threw");
        check(mismatches == 0, std::to_string(mismatches.load()) + " results differ from the serial ones");
        std::cout << "     " << calls.load() << " concurrent calls, " << mismatches.load() << " differing results\n";
    });
    return finish();
}
