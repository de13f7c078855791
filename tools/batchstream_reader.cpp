// batchstream_reader: read sampleINT8 batch files the way TensorRT's C++
// samples (the BatchStream helper of sampleINT8, TensorRT 5 to 8) read them,
// and dump every served batch as raw float32.
//
// Written for int8batch from the documented behaviour of that BatchStream
// helper (the file layout is the one int8batch/format.py describes); no
// TensorRT headers and no NVIDIA code.  Build:
//
//     g++ -std=c++17 -O2 -o batchstream_reader tools/batchstream_reader.cpp
//
// Usage:
//
//     batchstream_reader <prefix> <batchSize> <firstBatch> <maxBatches> <out.bin> [suffix]
//
// Files are <prefix><k><suffix>, k = 0, 1, ... (no zero padding), e.g. the
// prefix "out/batch" reads out/batch0, out/batch1, ...  For every served
// batch, out.bin receives batchSize*C*H*W data floats followed by batchSize
// label floats, in the host's byte order (as the samples read them).  stdout
// gets one line:
//
//     served <count> batch <B> image <C> <H> <W> file_n <N>
//
// Behaviour reproduced from BatchStream:
// - The header of file 0 fixes N, C, H, W; every value must be > 0.  Every
//   later file must carry the identical header, else the program stops with
//   an error and exit code 3 (the always-on check of the 8.x samples).
// - A one-file buffer of N images plus N labels and a position in it.
//   reset(first) empties the buffer (position = N) and skips `first` batches.
// - next(): refused once maxBatches batches were served; otherwise fills B
//   images in chunks of min(B - filled, N - pos), loading the next file when
//   the buffer is exhausted, so batches straddle files.  When a file is
//   missing the partial batch is dropped and the stream ends (the samples
//   exit() from locateFile here; this tool ends gracefully instead).
// - skip(k): fast path when B is a multiple of N and the buffer is exhausted:
//   only the file counter moves (k*B/N files, not read).  Otherwise next() is
//   called k times and the served-batch counter restored.  Because next() is
//   refused at maxBatches, the slow path skips at most maxBatches batches:
//   a real BatchStream quirk, kept on purpose (int8batch's
//   BatchSet.window(..., skip="batchstream") plans the same window).
// - Labels: N floats after the data; a file whose label block is missing
//   keeps the previous labels (zeros at first), a partial block is an error.
//   Bytes after the label block are ignored, as fread ignores them.

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitFormat = 3;
constexpr int kExitIO = 4;

struct FormatError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct IOError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// RAII wrapper around FILE*.
class File {
public:
    File(const std::string& path, const char* mode) : f_(std::fopen(path.c_str(), mode)) {}
    ~File() {
        if (f_) std::fclose(f_);
    }
    File(const File&) = delete;
    File& operator=(const File&) = delete;
    explicit operator bool() const { return f_ != nullptr; }
    std::FILE* get() const { return f_; }

private:
    std::FILE* f_;
};

struct Dims {
    int32_t n = 0, c = 0, h = 0, w = 0;
    bool operator==(const Dims& o) const { return n == o.n && c == o.c && h == o.h && w == o.w; }
    std::string str() const {
        return std::to_string(n) + "," + std::to_string(c) + "," + std::to_string(h) + "," + std::to_string(w);
    }
};

Dims read_header(std::FILE* f, const std::string& path) {
    int32_t d[4];
    if (std::fread(d, sizeof(int32_t), 4, f) != 4)
        throw FormatError(path + ": shorter than the 16-byte header");
    return Dims{d[0], d[1], d[2], d[3]};
}

class BatchFileStream {
public:
    BatchFileStream(std::string prefix, std::string suffix, int batch_size, int max_batches)
        : prefix_(std::move(prefix)), suffix_(std::move(suffix)), batch_(batch_size), max_batches_(max_batches) {
        const std::string first = file_name(0);
        File f(first, "rb");
        if (!f) throw IOError(first + ": cannot open the first batch file (" + std::strerror(errno) + ")");
        dims_ = read_header(f.get(), first);
        if (dims_.n <= 0 || dims_.c <= 0 || dims_.h <= 0 || dims_.w <= 0)
            throw FormatError(first + ": header N,C,H,W = " + dims_.str() + " has a value <= 0");
        image_ = static_cast<size_t>(dims_.c) * dims_.h * dims_.w;
        out_data_.assign(static_cast<size_t>(batch_) * image_, 0.0f);
        out_labels_.assign(batch_, 0.0f);
        file_data_.assign(static_cast<size_t>(dims_.n) * image_, 0.0f);
        file_labels_.assign(dims_.n, 0.0f);
        reset(0);
    }

    void reset(int first_batch) {
        served_ = 0;
        file_count_ = 0;
        pos_ = dims_.n;  // buffer exhausted: the next chunk loads a file
        skip(first_batch);
    }

    void skip(int count) {
        if (batch_ >= dims_.n && batch_ % dims_.n == 0 && pos_ == dims_.n) {
            file_count_ += count * (batch_ / dims_.n);  // fast path: whole files, not read
            return;
        }
        const int keep = served_;
        for (int i = 0; i < count; ++i) next();  // refused once served_ == max_batches_
        served_ = keep;
    }

    bool next() {
        if (served_ == max_batches_) return false;
        int filled = 0;
        while (filled < batch_) {
            if (pos_ == dims_.n && !load_next_file()) return false;  // partial batch dropped
            const int take = std::min(batch_ - filled, dims_.n - pos_);
            std::copy_n(file_data_.begin() + static_cast<size_t>(pos_) * image_, static_cast<size_t>(take) * image_,
                        out_data_.begin() + static_cast<size_t>(filled) * image_);
            std::copy_n(file_labels_.begin() + pos_, take, out_labels_.begin() + filled);
            filled += take;
            pos_ += take;
        }
        ++served_;
        return true;
    }

    const std::vector<float>& data() const { return out_data_; }
    const std::vector<float>& labels() const { return out_labels_; }
    const Dims& dims() const { return dims_; }

private:
    std::string file_name(long k) const { return prefix_ + std::to_string(k) + suffix_; }

    bool load_next_file() {
        const std::string path = file_name(file_count_++);
        File f(path, "rb");
        if (!f) {
            std::fprintf(stderr, "batchstream_reader: %s not found; end of data\n", path.c_str());
            return false;
        }
        const Dims d = read_header(f.get(), path);
        if (!(d == dims_))
            throw FormatError(path + ": header N,C,H,W = " + d.str() + " differs from " + dims_.str() +
                              " in " + file_name(0) + "; every file must have the same header");
        const size_t want = file_data_.size();
        if (std::fread(file_data_.data(), sizeof(float), want, f.get()) != want)
            throw FormatError(path + ": truncated, fewer than N*C*H*W data floats");
        const size_t got = std::fread(file_labels_.data(), sizeof(float), file_labels_.size(), f.get());
        if (got != 0 && got != file_labels_.size())
            throw FormatError(path + ": truncated label block (" + std::to_string(got) + " of " +
                              std::to_string(file_labels_.size()) + " floats)");
        if (got == 0)
            std::fprintf(stderr, "batchstream_reader: %s has no label block; previous labels kept\n", path.c_str());
        pos_ = 0;
        return true;
    }

    std::string prefix_, suffix_;
    int batch_, max_batches_;
    Dims dims_;
    size_t image_ = 0;
    int served_ = 0;
    long file_count_ = 0;
    int pos_ = 0;
    std::vector<float> out_data_, out_labels_, file_data_, file_labels_;
};

int parse_int(const char* s, const char* what) {
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < 0 || v > 0x7fffffffL) {
        std::fprintf(stderr, "batchstream_reader: %s must be a non-negative integer, got '%s'\n", what, s);
        std::exit(kExitUsage);
    }
    return static_cast<int>(v);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 6 && argc != 7) {
        std::fprintf(stderr,
                     "usage: %s <prefix> <batchSize> <firstBatch> <maxBatches> <out.bin> [suffix]\n"
                     "reads <prefix>0<suffix>, <prefix>1<suffix>, ... like sampleINT8's BatchStream\n",
                     argv[0]);
        return kExitUsage;
    }
    const int batch = parse_int(argv[2], "batchSize");
    const int first = parse_int(argv[3], "firstBatch");
    const int max_batches = parse_int(argv[4], "maxBatches");
    if (batch == 0) {
        std::fprintf(stderr, "batchstream_reader: batchSize must be > 0\n");
        return kExitUsage;
    }
    try {
        BatchFileStream stream(argv[1], argc == 7 ? argv[6] : "", batch, max_batches);
        stream.reset(first);
        File out(argv[5], "wb");
        if (!out) throw IOError(std::string(argv[5]) + ": cannot create (" + std::strerror(errno) + ")");
        int served = 0;
        while (stream.next()) {
            const auto& d = stream.data();
            const auto& l = stream.labels();
            if (std::fwrite(d.data(), sizeof(float), d.size(), out.get()) != d.size() ||
                std::fwrite(l.data(), sizeof(float), l.size(), out.get()) != l.size())
                throw IOError(std::string(argv[5]) + ": write failed");
            ++served;
        }
        const Dims& dm = stream.dims();
        std::printf("served %d batch %d image %d %d %d file_n %d\n", served, batch, dm.c, dm.h, dm.w, dm.n);
        return 0;
    } catch (const FormatError& e) {
        std::fprintf(stderr, "batchstream_reader: format error: %s\n", e.what());
        return kExitFormat;
    } catch (const IOError& e) {
        std::fprintf(stderr, "batchstream_reader: %s\n", e.what());
        return kExitIO;
    }
}
