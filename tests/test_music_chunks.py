"""data.train_chunk of the JSB chorales: training chorales cut into pieces of at most N steps."""

import numpy as np
import pytest

from pyro_dvae.data.music import build_jsb_chorales, cut


@pytest.mark.parametrize(
    ("steps", "length", "pieces"),
    [(129, 100, [65, 64]), (100, 100, [100]), (201, 100, [67, 67, 67]), (25, 100, [25])],
)
def test_cut_gives_consecutive_near_equal_pieces(steps, length, pieces):
    roll = np.arange(steps * 2).reshape(steps, 2)
    parts = cut(roll, length)
    assert [len(part) for part in parts] == pieces
    assert np.array_equal(np.concatenate(parts), roll)


@pytest.mark.parametrize("train_chunk", [1, 0, 2.5, "100"])
def test_a_bad_train_chunk_is_one_line_naming_the_key(train_chunk):
    with pytest.raises(ValueError, match=r"^data\.train_chunk="):
        build_jsb_chorales(train_chunk=train_chunk)
