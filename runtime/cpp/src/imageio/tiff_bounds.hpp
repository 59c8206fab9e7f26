// The byte bounds of runtime/VECTORS.md ("TIFF byte bounds") for mrdl::imageio's TIFF reader: what
// a TIFF's strip / tile tags claim is checked against the file before libtiff reads any pixel data.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace mrdl::imageio {

/// The geometry of the chunks (strips or tiles) an image uses, from the header libtiff parsed.
struct ChunkGeometry {
    bool tiled = false;
    uint32_t width = 0, height = 0;              // the image
    uint32_t chunk_width = 0, chunk_height = 0;  // a tile, or a strip (image width x RowsPerStrip)
    uint64_t row_bytes = 0;                      // one decoded row of a chunk: ceil(chunk_width x samples x bits / 8)
    int planes = 1;                              // the planes read: the kept ones when planes are separate, else 1
    bool compressed = false;                     // Compression is not 1
};

/// Check the bounds, in the words runtime/tiff.py's chunk_reads uses (InputError naming the file):
/// the StripOffsets / StripByteCounts (TileOffsets / TileByteCounts) of the file's first directory,
/// read as the file stores them (libtiff re-estimates some byte counts it finds implausible, so its
/// view is not the file's), list every chunk the image uses, each inside the file (offset + bytes
/// at most the file's size), and a compressed one holds at most 4 x its decoded bytes + 1024.
void check_chunk_bytes(const std::string& path, const ChunkGeometry& geometry);

}  // namespace mrdl::imageio
