"""The dataset: finding, loading, validating, downloading and splitting HAM10000 and other ISIC sets.

Owns the image table (``data``, ``layout``), the download (``download``), lesion-grouped
splits and the leakage checks against them (``splits``, ``leakage``), decoding images
from files, uploads and zips (``images``), the upload folders (``uploads``), the
explorer's aggregates (``explore``) and the dataset's command line (``commands``).
"""

MAY_IMPORT = ('contracts',)  # the other core packages this one may import (tests/test_architecture.py checks it)
