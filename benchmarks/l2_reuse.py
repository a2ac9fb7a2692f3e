"""A model, not a measurement: how much of cross entropy's second read of a looped row an L2
could serve, for pass 2 swept forward (the order of pass 1) or downward (the kernel's order,
from the block pass 1 read last, which it also keeps in registers).

The model: P programs (the persistent grid of `_common.persistent_programs`) each sweep rows of
n blocks of 8192 classes, pass 1 then pass 2, in lockstep (one block each per step, round
robin), through a least-recently-used cache of the L2's size in whole blocks. A GPU's L2 is
neither fully associative nor exactly LRU, and its programs drift apart, so the numbers say
which order suits the cache, not what a GPU will measure.

    python benchmarks/l2_reuse.py
"""
import collections

BLOCK = 8192
L2_BYTES = 50 * 2**20  # H100's
MULTIPROCESSORS = 132


def second_read_hits(num_blocks, block_bytes, programs, l2_bytes, downward, rows_per_program=3):
    """The fraction of pass 2's block reads that hit the modelled cache."""
    capacity = l2_bytes // block_bytes
    cache = collections.OrderedDict()
    hits = reads = 0

    def sweep(program, row):
        """One program's accesses to one row: ('pass 1' or 'pass 2', block)."""
        for block in range(num_blocks):
            yield 1, (program, row, block)
        order = range(num_blocks - 2, -1, -1) if downward else range(num_blocks)
        for block in order:  # downward: the last block is in registers, not read again
            yield 2, (program, row, block)

    def rows(program):
        for row in range(rows_per_program):
            yield from sweep(program, row)

    streams = [rows(program) for program in range(programs)]
    while streams:
        alive = []
        for stream in streams:
            access = next(stream, None)
            if access is None:
                continue
            alive.append(stream)
            phase, key = access
            if phase == 2:
                reads += 1
                hits += key in cache
            cache[key] = True
            cache.move_to_end(key)
            if len(cache) > capacity:
                cache.popitem(last=False)
        streams = alive
    return hits / max(reads, 1)


def cases():
    """(name, blocks per row, block bytes, programs) for the benchmark's looped rows."""
    rows = []
    for vocabulary in (128256, 256000):
        for dtype, size in (("bf16", 2), ("fp32", 4)):
            row_bytes = vocabulary * size
            fitting = L2_BYTES // (2 * row_bytes)
            programs = max(MULTIPROCESSORS, min(2 * MULTIPROCESSORS, fitting))
            rows.append((f"V={vocabulary} {dtype}", -(-vocabulary // BLOCK), BLOCK * size,
                         programs))
    return rows


def main():
    print(f"{'row':<14} {'programs':>8} {'rows in flight':>15} {'forward hits':>13} "
          f"{'downward hits':>14}")
    for name, blocks, block_bytes, programs in cases():
        flight = programs * blocks * block_bytes / 2**20
        forward = second_read_hits(blocks, block_bytes, programs, L2_BYTES, downward=False)
        downward = second_read_hits(blocks, block_bytes, programs, L2_BYTES, downward=True)
        print(f"{name:<14} {programs:>8} {flight:>11.0f} MiB {forward:>13.0%} {downward:>14.0%}")


if __name__ == "__main__":
    main()
