"""A party process's allocator settings (parties.memory)."""

import numpy

from parties.memory import no_huge_page_advice


def test_numpy_no_longer_advises_huge_pages_for_its_large_arrays():
    multiarray = numpy._core.multiarray
    before = multiarray._set_madvise_hugepage(True)  # returns the setting it replaces
    try:
        assert no_huge_page_advice()
        assert multiarray._get_madvise_hugepage() is False
    finally:
        multiarray._set_madvise_hugepage(before)
