"""The integers of the direction definition (compo/perturbation.py states it), shared with
the kernels of this package, which never import compo.perturbation (it imports them)."""

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64 increment
MIX1 = 0xBF58476D1CE4E5B9  # SplitMix64 finaliser multipliers
MIX2 = 0x94D049BB133111EB
LANE_BITS = 16  # table index bits taken from each hash lane
LANES = 64 // LANE_BITS  # values per 64-bit hash
LANE_MASK = (1 << LANE_BITS) - 1


def signed(value: int) -> int:
    """A 64-bit pattern as a signed int64 (torch has no usable uint64)."""
    value &= MASK64
    return value - (1 << 64) if value >> 63 else value
