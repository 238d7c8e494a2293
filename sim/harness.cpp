// A C++ test harness for the NSM core under Verilator: streams images through the core as fast
// as the Verilated model runs, for the long co-simulations (thousands of images) that a cocotb
// bench, which needs every signal public (--public-flat-rw) and Python awake at every edge,
// runs tens of times slower. It judges nothing: sim/runner.py compares what it writes with the
// golden model, integer for integer, as it does for the cocotb bench (sim/tb_core.py).
//
// The same streams and the same cycle numbering as the cocotb bench without stalls: a 3-cycle
// reset, the weight image on w_axis (where the core has one: NSM_W_AXIS), then every image's
// pixels back to back on s_axis (input always valid, tlast on each image's last pixel), and
// m_axis_tready held high. Each cycle the inputs are set, the logic settles (clk low), the
// handshakes of the coming rising edge are read, then the edge is clocked. Edge e is cycle e.
//
//   Vtop PIXELS N_IMG N_IN WEIGHTS|- OUT PROGRESS MAX_CYCLES
//
// PIXELS, WEIGHTS: little-endian uint32 beats. OUT: per result, int64 class, valid_at (the
// cycle m_axis_tvalid went high), done_at (its handshake) and last_pixel (the image's last
// pixel handshake), then m_axis_tuser as little-endian uint32 words. PROGRESS: a file rewritten
// with the number of results so far. Exit 0 when all N_IMG results are out and no other follows
// within 4,096 cycles; 3 with one line on stderr when MAX_CYCLES pass first or the core
// misbehaves (a result before its image is in, w_axis ready after the weight image).

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "Vtop.h"
#include "verilated.h"

namespace {

std::vector<uint32_t> read_beats(const char* path) {
    std::vector<uint32_t> out;
    FILE* f = std::fopen(path, "rb");
    if (!f) {
        std::fprintf(stderr, "harness: cannot read %s\n", path);
        std::exit(3);
    }
    uint32_t buf[4096];
    size_t n;
    while ((n = std::fread(buf, sizeof(uint32_t), 4096, f)) > 0) out.insert(out.end(), buf, buf + n);
    std::fclose(f);
    return out;
}

// m_axis_tuser as 32-bit words, least significant first: an integer port or a VlWide.
template <typename T>
void put_words(std::vector<uint32_t>& out, const T& v) {
    if constexpr (std::is_integral_v<T>) {
        const uint64_t x = static_cast<uint64_t>(v);
        for (size_t i = 0; i < (sizeof(T) + 3) / 4; ++i) out.push_back(static_cast<uint32_t>(x >> (32 * i)));
    } else {
        for (size_t i = 0; i < sizeof(T) / 4; ++i) out.push_back(static_cast<uint32_t>(v[i]));
    }
}

void write_progress(const char* path, long done) {
    FILE* f = std::fopen(path, "w");
    if (f) {
        std::fprintf(f, "%ld", done);
        std::fclose(f);
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 8) {
        std::fprintf(stderr, "usage: %s PIXELS N_IMG N_IN WEIGHTS|- OUT PROGRESS MAX_CYCLES\n", argv[0]);
        return 3;
    }
    const std::vector<uint32_t> pixels = read_beats(argv[1]);
    const long n_img = std::atol(argv[2]), n_in = std::atol(argv[3]);
    const std::vector<uint32_t> weights =
        std::string(argv[4]) == "-" ? std::vector<uint32_t>() : read_beats(argv[4]);
    const char* progress = argv[6];
    const long long max_cycles = std::atoll(argv[7]);
    if (static_cast<long>(pixels.size()) != n_img * n_in) {
        std::fprintf(stderr, "harness: %s holds %zu beats, not %ld x %ld\n", argv[1], pixels.size(), n_img, n_in);
        return 3;
    }
    FILE* out = std::fopen(argv[5], "wb");
    if (!out) {
        std::fprintf(stderr, "harness: cannot write %s\n", argv[5]);
        return 3;
    }

#ifndef NSM_W_AXIS
    if (!weights.empty()) {
        std::fprintf(stderr, "harness: a weight image for a core without w_axis\n");
        return 3;
    }
#endif
    const std::unique_ptr<VerilatedContext> ctx{new VerilatedContext};
    const std::unique_ptr<Vtop> top{new Vtop{ctx.get()}};
    long long edge = 0;
    auto clock = [&]() {  // the rising edge `edge`, then the falling one
        top->clk = 1;
        top->eval();
        top->clk = 0;
        ++edge;
    };

    top->clk = 0;
    top->seed = 0;
    top->seed_valid = 0;
    top->s_axis_tvalid = 0;
    top->s_axis_tlast = 0;
    top->s_axis_tdata = 0;
    top->m_axis_tready = 1;
#ifdef NSM_W_AXIS
    top->w_axis_tvalid = 0;
    top->w_axis_tlast = 0;
    top->w_axis_tdata = 0;
#endif
    top->rst = 1;
    top->eval();
    for (int i = 0; i < 3; ++i) {
        top->eval();
        clock();
    }
    top->rst = 0;

    size_t w = 0;
    const size_t n_beats = pixels.size();
    size_t px = 0;
    long results = 0;
    const long report_every = n_img / 100 > 0 ? n_img / 100 : 1;
    std::vector<long long> last_pixel(n_img, -1);
    std::vector<uint32_t> words;
    bool weights_done = weights.empty();
    while (results < n_img) {
        if (edge >= max_cycles) {
            std::fprintf(stderr, "harness: %ld of %ld results after %lld cycles (the limit)\n", results, n_img, edge);
            std::fclose(out);
            return 3;
        }
#ifdef NSM_W_AXIS
        const bool w_valid = w < weights.size();
        top->w_axis_tvalid = w_valid;
        if (w_valid) {
            top->w_axis_tdata = weights[w];
            top->w_axis_tlast = w + 1 == weights.size();
        }
#endif
        const bool s_valid = weights_done && px < n_beats;
        top->s_axis_tvalid = s_valid;
        if (s_valid) {
            top->s_axis_tdata = pixels[px];
            top->s_axis_tlast = (px + 1) % n_in == 0;
        }
        top->eval();  // settled, clk low: what the coming edge sees
#ifdef NSM_W_AXIS
        if (w_valid && top->w_axis_tready && ++w == weights.size()) weights_done = true;
#endif
        if (top->m_axis_tvalid) {  // tready is high: taken at this edge, set by the one before
            if (last_pixel[results] < 0) {
                std::fprintf(stderr, "harness: result %ld at cycle %lld before its image was in\n", results, edge);
                std::fclose(out);
                return 3;
            }
            const int64_t rec[4] = {static_cast<int64_t>(top->m_axis_tdata), edge - 1, edge, last_pixel[results]};
            words.clear();
            put_words(words, top->m_axis_tuser);
            if (std::fwrite(rec, sizeof(int64_t), 4, out) != 4 ||
                std::fwrite(words.data(), sizeof(uint32_t), words.size(), out) != words.size()) {
                std::fprintf(stderr, "harness: cannot write %s\n", argv[5]);
                std::fclose(out);
                return 3;
            }
            ++results;
            if (results % report_every == 0 || results == n_img) write_progress(progress, results);
        }
        if (s_valid && top->s_axis_tready) {
            ++px;
            if (px % n_in == 0) last_pixel[px / n_in - 1] = edge;
        }
        clock();
#ifdef NSM_W_AXIS
        if (weights_done && w == weights.size() && w > 0) {
            top->w_axis_tvalid = 0;
            top->eval();
            if (top->w_axis_tready) {
                std::fprintf(stderr, "harness: w_axis still ready after the whole weight image\n");
                std::fclose(out);
                return 3;
            }
            w = weights.size() + 1;  // checked once
        }
#endif
    }
    // One result per image: no further result may appear (watched for 4,096 cycles).
    top->s_axis_tvalid = 0;
    for (int i = 0; i < 4096; ++i) {
        top->eval();
        if (top->m_axis_tvalid) {
            std::fprintf(stderr, "harness: a result after the last image's, at cycle %lld\n", edge);
            std::fclose(out);
            return 3;
        }
        clock();
    }
    top->final();
    if (std::fclose(out) != 0) {
        std::fprintf(stderr, "harness: cannot write %s\n", argv[5]);
        return 3;
    }
    return 0;
}
