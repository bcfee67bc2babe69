"""Shared hypothesis strategies: small shapes that include 1, and seeds."""
from hypothesis import strategies as st

seeds = st.integers(0, 2**31 - 1)
small = st.integers(1, 5)        # sizes that include the awkward 1
dims = st.integers(1, 9)


@st.composite
def model_shapes(draw):
    """(B, T, n_heads, head_dim) with every size possibly 1."""
    return draw(small), draw(small), draw(st.integers(1, 3)), draw(st.integers(1, 4))
