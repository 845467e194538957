"""The project's contracts: the file formats and names every other part reads and writes.

Owns the class list (``labels``), the configured folders (``paths``), the run folder's
file names, records, lock and the one atomic writer (``runfolder``), the predictions
CSV and every CSV the project writes (``predictions``), and the checks of user input
with their one-line errors and exit codes (``validation``). Imports no other ``core``
package: everything else builds on it.
"""

MAY_IMPORT = ()  # the other core packages this one may import (tests/test_architecture.py checks it)
